"""The interactive logins of `vgate login`: browser (code + PKCE on a loopback redirect)
and device code. Both talk to the person on stderr only."""

from __future__ import annotations

import html
import os
import secrets
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TextIO
from urllib.parse import parse_qs, urlsplit

from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from gateway.login.errors import LoginError
from gateway.login.provider import OAuthFailure, Provider, Tokens

CALLBACK_PATH = "/callback"

_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>vgate login</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem}}
</style></head><body><h1>{title}</h1><p>{text}</p></body></html>"""


class _Callback:
    """What the loopback server got: the authorization response's query parameters."""

    def __init__(self) -> None:
        self.params: dict[str, str] | None = None
        self.done = threading.Event()


def _handler(result: _Callback, state: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path != CALLBACK_PATH:
                self._page(404, "Not found", "This is vgate login's one-time callback.")
                return
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            if params.get("state") != state:
                self._page(400, "Login failed", "The answer does not belong to this login "
                           "(state mismatch). Start again with kubectl.")
                return
            if "error" in params:
                self._page(403, "Login not completed",
                           html.escape(params.get("error_description") or params["error"]))
            else:
                self._page(200, "Signed in", "vgate login has your token. You can close this "
                           "tab and go back to the terminal.")
            result.params = params
            result.done.set()

        def _page(self, code: int, title: str, text: str) -> None:
            body = _PAGE.format(title=title, text=text).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the query holds the authorization code: never log it

    return Handler


def _bind(ports: list[int]) -> HTTPServer:
    errors = []
    for port in ports:
        try:
            return HTTPServer(("127.0.0.1", port), _handler(_Callback(), ""))
        except OSError as exc:
            errors.append(f"{port}: {exc.strerror}")
    raise LoginError("cannot listen on any loopback port for the login redirect ("
                     + "; ".join(errors) + "); free one or pass --listen-port")


def can_open_browser() -> bool:
    """A graphical browser can be opened (never a console browser inside kubectl's terminal)."""
    return (sys.platform in ("darwin", "win32")
            or any(os.environ.get(v) for v in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")))


def browser_login(
    provider: Provider,
    *,
    scope: str,
    ports: list[int],
    open_browser: bool,
    timeout: float,
    login_hint: str = "",
    err: TextIO = sys.stderr,
    opener: Callable[[str], bool] = webbrowser.open,
) -> Tokens:
    """Authorization code + PKCE (S256) with `state` and `nonce`, redirected to 127.0.0.1."""
    endpoints = provider.endpoints()
    server = _bind(ports)
    port = server.server_address[1]
    redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier = generate_token(64)
    result = _Callback()
    server.RequestHandlerClass = _handler(result, state)
    server.timeout = 0.2
    thread = threading.Thread(target=_serve_until, args=(server, result), daemon=True)
    thread.start()
    try:
        with provider.client(redirect_uri=redirect_uri, scope=scope) as c:
            extra = {"login_hint": login_hint} if login_hint else {}
            url, _ = c.create_authorization_url(
                endpoints.authorization, state=state, nonce=nonce,
                code_challenge=create_s256_code_challenge(verifier),
                code_challenge_method="S256", **extra,
            )
        opened = False
        if open_browser and can_open_browser():
            try:
                opened = opener(url)
            except Exception:
                opened = False
        if opened:
            print(f"vgate: a browser opened to sign you in at {provider.issuer}; if it did not, "
                  f"open this URL:\n{url}", file=err, flush=True)
        else:
            print(f"vgate: open this URL in a browser to sign in at {provider.issuer}:\n{url}",
                  file=err, flush=True)
        if not result.done.wait(timeout):
            raise LoginError(f"no login arrived within {timeout:.0f} s (was the browser "
                             "closed?); run the command again to retry")
    finally:
        result.done.set()
        thread.join(2)
        server.server_close()
    params = result.params or {}
    if "error" in params:
        if params["error"] == "access_denied":
            raise LoginError("the sign-in was denied or cancelled at the identity provider"
                             + (f": {params.get('error_description')}"
                                if params.get("error_description") else ""))
        raise LoginError(f"the identity provider refused the sign-in: {params['error']} "
                         f"{params.get('error_description', '')}".strip())
    if params.get("iss") not in (None, provider.issuer):
        raise LoginError("the authorization answer came from another issuer (iss mismatch)")
    code = params.get("code")
    if not code:
        raise LoginError("the authorization answer has no code")
    return provider.exchange_code(code, redirect_uri=redirect_uri, verifier=verifier,
                                  nonce=nonce)


def _serve_until(server: HTTPServer, result: _Callback) -> None:
    while not result.done.is_set():
        server.handle_request()


def device_login(
    provider: Provider,
    *,
    scope: str,
    err: TextIO = sys.stderr,
    sleep: Callable[[float], None] = time.sleep,
) -> Tokens:
    """The device authorization grant (RFC 8628): show the code, poll until done."""
    start = provider.device_start(scope)
    uri = start.get("verification_uri") or ""
    complete = start.get("verification_uri_complete")
    print(f"vgate: to sign in, open {uri} and enter the code {start.get('user_code', '')}",
          file=err, flush=True)
    if complete:
        print(f"vgate: or open {complete}", file=err, flush=True)
    interval = max(float(start.get("interval", 5) or 5), 1.0)
    deadline = time.monotonic() + float(start.get("expires_in", 600) or 600)
    while True:
        sleep(interval)
        if time.monotonic() > deadline:
            raise LoginError("the device code expired before the sign-in was completed; "
                             "run the command again for a new code")
        try:
            return provider.device_poll(start["device_code"])
        except OAuthFailure as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += 5
                continue
            if exc.error == "expired_token":
                raise LoginError("the device code expired before the sign-in was completed; "
                                 "run the command again for a new code") from None
            if exc.error == "access_denied":
                raise LoginError("the sign-in was denied at the identity provider") from None
            raise
