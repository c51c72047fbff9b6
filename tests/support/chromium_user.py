"""A person at Chromium, for `vgate login`'s browser sign-in: run as `$BROWSER URL`.

It opens the authorization URL in Debian's Chromium, signs in at the dev IdP as
VGATE_TEST_USER / VGATE_TEST_PASSWORD and waits until the browser is back at vgate's
loopback page. One line per run is appended to VGATE_TEST_BROWSER_LOG when set.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.chromium import launch, sign_in_at_idp


def run(url: str) -> int:
    from playwright.sync_api import sync_playwright

    parts = urlsplit(url)
    issuer = f"{parts.scheme}://{parts.netloc}"
    user = os.environ.get("VGATE_TEST_USER", "alice")
    log = os.environ.get("VGATE_TEST_BROWSER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"chromium {parts.netloc}\n")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = launch(pw, Path(profile))
        try:
            page = context.new_page()
            page.set_default_timeout(30000)
            page.goto(url)
            sign_in_at_idp(page, issuer, user, os.environ.get("VGATE_TEST_PASSWORD", user))
            page.wait_for_url("http://127.0.0.1:*/callback?**")
            print(
                f"chromium_user: back at {urlsplit(page.url).netloc}: "
                f"{page.inner_text('body')[:80]!r}",
                file=sys.stderr,
            )
        finally:
            context.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
