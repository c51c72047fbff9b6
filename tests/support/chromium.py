"""Debian's Chromium (`/usr/bin/chromium`, no browser download) driven by playwright: the
flags every test uses, and a person signing in at the dev IdP's forms."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# loopback only: the IdP's login page pulls web fonts from the internet
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # gitignored


def missing() -> str | None:
    """Why Chromium cannot be driven here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright pip package is missing"
    return None


def launch(pw: Any, profile: Path, **options: Any) -> Any:
    """A persistent context (it owns a fresh --user-data-dir; playwright refuses the flag)."""
    return pw.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS, **options
    )


def sign_in_at_idp(page: Any, issuer: str, user: str, password: str) -> None:
    """The dev IdP's login form, then its consent form if it asks."""
    page.wait_for_url(f"{issuer}/interaction/**")
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(f"{issuer}/interaction/"):
        page.wait_for_selector("button[type=submit]")
        page.click("button[type=submit]")  # consent
