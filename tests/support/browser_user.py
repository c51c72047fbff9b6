"""A scripted person at a browser, for `vgate login` tests: run as `$BROWSER URL`.

It follows the authorization URL with an HTTP client, fills the dev IdP's login and
consent forms, and finally calls the loopback redirect, like a browser would.

Environment: VGATE_TEST_USER / VGATE_TEST_PASSWORD (who signs in), VGATE_TEST_BROWSER_LOG
(one line appended per run: proves whether a login happened), VGATE_TEST_BROWSER_MODE:
`login` (default), `deny` (cancel at the IdP), `close` (do nothing: the tab was closed).
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urljoin, urlsplit

import httpx

from tests.support.oidc import _forms


def _is_loopback_callback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.hostname == "127.0.0.1" and parts.path == "/callback"


def run(url: str) -> int:
    mode = os.environ.get("VGATE_TEST_BROWSER_MODE", "login")
    log = os.environ.get("VGATE_TEST_BROWSER_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{mode} {urlsplit(url).netloc}\n")
    if mode == "close":
        return 0
    user = os.environ.get("VGATE_TEST_USER", "alice")
    password = os.environ.get("VGATE_TEST_PASSWORD", user)
    with httpx.Client(timeout=10.0, follow_redirects=False) as c:
        resp = c.get(url)
        for _ in range(30):
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if _is_loopback_callback(location):
                    c.get(location)
                    return 0
                resp = c.get(location)
                continue
            path = urlsplit(str(resp.url)).path
            if mode == "deny" and path.startswith("/interaction/"):
                resp = c.get(str(resp.url).rstrip("/") + "/abort")
                continue
            forms = [f for f in _forms(resp.text) if f["method"] == "post"]
            if not forms:
                print(f"browser_user: stuck at {resp.url} ({resp.status_code})", file=sys.stderr)
                return 1
            fields = dict(forms[0]["fields"])
            if fields.get("prompt") == "login":
                fields.update(login=user, password=password)
            resp = c.post(urljoin(str(resp.url), forms[0]["action"]), data=fields)
    return 1


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1]))
