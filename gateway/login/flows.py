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
                self._page(
                    400,
                    "Login failed",
                    "The answer does not belong to this login "
                    "(state mismatch). Start again with kubectl.",
                )
                return
            if "error" in params:
                self._page(
                    403,
                    "Login not completed",
                    html.escape(params.get("error_description") or params["error"]),
                )
            else:
                self._page(
                    200,
                    "Signed in",
                    "vgate login has your token. You can close this "
                    "tab and go back to the terminal.",
                )
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
    raise LoginError(
        "cannot listen on any loopback port for the login redirect ("
        + "; ".join(errors)
        + "); free one or pass --listen-port"
    )


def can_open_browser() -> bool:
    """A graphical browser can be opened (never a console browser inside kubectl's terminal)."""
    return sys.platform in ("darwin", "win32") or any(
        os.environ.get(v) for v in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")
    )


def open_browser(url: str) -> bool:
    """Open `url` with the preferred browser only ($BROWSER first); False when that fails.

    `webbrowser.open` would go on to the next registered browser, which on a terminal can be
    a console browser (lynx, w3m) taking over kubectl's terminal.
    """
    try:
        return bool(webbrowser.get().open(url))
    except (webbrowser.Error, OSError):
        return False


class LoopbackLogin:
    """Authorization code + PKCE (S256) with `state` and `nonce`, redirected to 127.0.0.1.

    A context manager: entering listens on the first free port of `ports` and builds `url`;
    `wait()` returns the tokens once the browser came back; leaving stops listening.
    """

    def __init__(
        self, provider: Provider, *, scope: str, ports: list[int], login_hint: str = ""
    ) -> None:
        self.provider = provider
        self.scope = scope
        self.ports = ports
        self.login_hint = login_hint
        self.url = ""
        self._result = _Callback()

    def __enter__(self) -> LoopbackLogin:
        endpoints = self.provider.endpoints()
        self._server = server = _bind(self.ports)
        self.redirect_uri = f"http://127.0.0.1:{server.server_address[1]}{CALLBACK_PATH}"
        state, self._nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._verifier = generate_token(64)
        server.RequestHandlerClass = _handler(self._result, state)
        server.timeout = 0.2
        self._thread = threading.Thread(
            target=_serve_until, args=(server, self._result), daemon=True
        )
        self._thread.start()
        try:
            with self.provider.client(redirect_uri=self.redirect_uri, scope=self.scope) as c:
                extra = {"login_hint": self.login_hint} if self.login_hint else {}
                self.url, _ = c.create_authorization_url(
                    endpoints.authorization,
                    state=state,
                    nonce=self._nonce,
                    code_challenge=create_s256_code_challenge(self._verifier),
                    code_challenge_method="S256",
                    **extra,
                )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._result.done.set()
        self._thread.join(2)
        self._server.server_close()

    def wait(self, timeout: float) -> Tokens:
        """The tokens of the sign-in that comes back to the loopback redirect."""
        if not self._result.done.wait(timeout):
            raise LoginError(
                f"no login arrived within {timeout:.0f} s (was the browser "
                "closed?); run the command again to retry"
            )
        provider = self.provider
        params = self._result.params or {}
        if "error" in params:
            if params["error"] == "access_denied":
                raise LoginError(
                    "the sign-in was denied or cancelled at the identity provider"
                    + (
                        f": {params.get('error_description')}"
                        if params.get("error_description")
                        else ""
                    )
                )
            raise LoginError(
                f"the identity provider refused the sign-in: {params['error']} "
                f"{params.get('error_description', '')}".strip()
            )
        if params.get("iss") not in (None, provider.issuer):
            raise LoginError("the authorization answer came from another issuer (iss mismatch)")
        code = params.get("code")
        if not code:
            raise LoginError("the authorization answer has no code")
        return provider.exchange_code(
            code, redirect_uri=self.redirect_uri, verifier=self._verifier, nonce=self._nonce
        )


def sign_in(
    provider: Provider,
    *,
    scope: str,
    ports: list[int],
    open_browser_first: bool,
    timeout: float,
    login_hint: str = "",
    err: TextIO = sys.stderr,
    opener: Callable[[str], bool] = open_browser,
    sleep: Callable[[float], None] = time.sleep,
) -> Tokens:
    """Sign in interactively, showing the person one URL (on `err`) at most.

    With `open_browser_first`: in a browser when one can be opened, else with the device
    flow when the IdP offers it to this client. Otherwise (or when the device flow is not
    offered): print the loopback login's URL for the person to open.
    """
    if open_browser_first and can_open_browser():
        with LoopbackLogin(provider, scope=scope, ports=ports, login_hint=login_hint) as login:
            try:
                opened = opener(login.url)
            except Exception:
                opened = False
            if opened:
                print(
                    f"vgate: a browser opened to sign you in at {provider.issuer}; if it did "
                    f"not, open this URL:\n{login.url}",
                    file=err,
                    flush=True,
                )
                return login.wait(timeout)
        print("vgate: the browser could not be opened", file=err, flush=True)
    if open_browser_first and provider.endpoints().device_authorization:
        try:
            start = provider.device_start(scope)
        except OAuthFailure as exc:  # the IdP does not allow the device flow for this client
            print(f"vgate: the device flow is not available ({exc})", file=err, flush=True)
        else:
            return device_login(provider, scope=scope, err=err, sleep=sleep, start=start)
    with LoopbackLogin(provider, scope=scope, ports=ports, login_hint=login_hint) as login:
        print(
            f"vgate: open this URL in a browser to sign in at {provider.issuer}:\n{login.url}",
            file=err,
            flush=True,
        )
        return login.wait(timeout)


def _serve_until(server: HTTPServer, result: _Callback) -> None:
    while not result.done.is_set():
        server.handle_request()


def device_login(
    provider: Provider,
    *,
    scope: str,
    err: TextIO = sys.stderr,
    sleep: Callable[[float], None] = time.sleep,
    start: dict | None = None,
) -> Tokens:
    """The device authorization grant (RFC 8628): show the code, poll until done.

    `start` is the device authorization answer when the caller already asked for it."""
    if start is None:
        start = provider.device_start(scope)
    uri = start.get("verification_uri") or ""
    complete = start.get("verification_uri_complete")
    print(
        f"vgate: to sign in, open {uri} and enter the code {start.get('user_code', '')}",
        file=err,
        flush=True,
    )
    if complete:
        print(f"vgate: or open {complete}", file=err, flush=True)
    interval = max(float(start.get("interval", 5) or 5), 1.0)
    deadline = time.monotonic() + float(start.get("expires_in", 600) or 600)
    while True:
        sleep(interval)
        if time.monotonic() > deadline:
            raise LoginError(
                "the device code expired before the sign-in was completed; "
                "run the command again for a new code"
            )
        try:
            return provider.device_poll(start["device_code"])
        except OAuthFailure as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                interval += 5
                continue
            if exc.error == "expired_token":
                raise LoginError(
                    "the device code expired before the sign-in was completed; "
                    "run the command again for a new code"
                ) from None
            if exc.error == "access_denied":
                raise LoginError("the sign-in was denied at the identity provider") from None
            raise
