"""A real OpenID Provider for tests: npm `oidc-provider` run from `deploy/dev-idp/`.

`OIDCProvider` writes the dev IdP's JSON config, runs `node server.mjs` on a free
127.0.0.1 port and walks its login + consent forms with httpx, so tests get real
ID, access and refresh tokens without a browser.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.quickstart.dev_idp import ensure_node_modules
from tests.support.pki import Leaf

REPO_ROOT = Path(__file__).resolve().parents[2]
DEV_IDP_DIR = REPO_ROOT / "deploy" / "dev-idp"
NODE = shutil.which("node")

DEFAULT_SCOPES = "openid email profile groups offline_access"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:38123/callback"  # any loopback port works (RFC 8252)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
START_TIMEOUT = 15.0
_RUNNING: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a dev IdP behind when a test run dies without stop()."""
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()


class OIDCError(RuntimeError):
    """An OAuth error answer (`error`, `error_description`) or a broken flow."""

    def __init__(self, message: str, *, error: str | None = None, status: int | None = None):
        super().__init__(message)
        self.error = error
        self.status = status


@dataclass
class TokenSet:
    """A token endpoint answer."""

    id_token: str
    access_token: str
    refresh_token: str | None
    expires_in: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


# ---------------------------------------------------------------- keys


def _b64u_int(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64u_fixed(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def private_jwk(kind: str = "RSA", kid: str | None = None) -> dict[str, str]:
    """One private signing JWK: kind "RSA" (RS256) or "EC" (ES256, P-256)."""
    kind = kind.upper()
    kid = kid or f"{kind.lower()}-{secrets.token_hex(6)}"
    if kind == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        n = key.private_numbers()
        pub = n.public_numbers
        return {
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "use": "sig",
            "n": _b64u_int(pub.n),
            "e": _b64u_int(pub.e),
            "d": _b64u_int(n.d),
            "p": _b64u_int(n.p),
            "q": _b64u_int(n.q),
            "dp": _b64u_int(n.dmp1),
            "dq": _b64u_int(n.dmq1),
            "qi": _b64u_int(n.iqmp),
        }
    if kind == "EC":
        eckey = ec.generate_private_key(ec.SECP256R1())
        en = eckey.private_numbers()
        return {
            "kty": "EC",
            "kid": kid,
            "alg": "ES256",
            "use": "sig",
            "crv": "P-256",
            "x": _b64u_fixed(en.public_numbers.x, 32),
            "y": _b64u_fixed(en.public_numbers.y, 32),
            "d": _b64u_fixed(en.private_value, 32),
        }
    raise ValueError(f"unknown key kind {kind!r} (RSA or EC)")


def public_jwk(jwk: dict[str, str]) -> dict[str, str]:
    """The public half of a JWK."""
    private = {"d", "p", "q", "dp", "dq", "qi"}
    return {k: v for k, v in jwk.items() if k not in private}


def generate_jwks(path: Path, *, kind: str = "RSA", kid: str | None = None) -> dict:
    """Write a private JWKS with one signing key to `path` (mode 0600) and return it."""
    jwks = {"keys": [private_jwk(kind, kid)]}
    _write_private_json(Path(path), jwks)
    return jwks


def _write_private_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)


# ---------------------------------------------------------------- node side


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FormParser(HTMLParser):
    """Collects <form action method> with their named <input>/<button> values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {
                    "id": a.get("id", ""),
                    "action": a.get("action", ""),
                    "method": a.get("method", "get").lower(),
                    "fields": {},
                }
            )
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")


def _forms(html: str) -> list[dict[str, Any]]:
    parser = _FormParser()
    parser.feed(html)
    return parser.forms


def _oauth_error(resp: httpx.Response, what: str) -> OIDCError:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    desc = body.get("error_description", "") if isinstance(body, dict) else ""
    text = f"{err}: {desc}" if err else resp.text[:500]
    return OIDCError(
        f"{what} failed ({resp.status_code}): {text}", error=err, status=resp.status_code
    )


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class OIDCProvider:
    """The dev IdP as a subprocess; `issuer` and `port` are fixed for the object's life."""

    client_id = "vgate"
    portal_client_id = "vgate-portal"

    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, dict],
        tls: Leaf | None = None,
        ttl: dict | None = None,
        extra_clients: list[dict] | None = None,
        keys: list[str] | None = None,
        ca_file: Path | None = None,
        portal_redirect_uris: list[str] | None = None,
        resources: dict[str, dict] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.tls = tls
        self.ttl = dict(ttl or {})
        self.extra_clients = list(extra_clients or [])
        self.portal_redirect_uris = list(
            portal_redirect_uris or ["http://127.0.0.1/oauth2/callback"]
        )
        self.resources = resources
        self.portal_client_secret = secrets.token_urlsafe(32)
        self.port = free_port()
        scheme = "https" if tls else "http"
        self.issuer = f"{scheme}://127.0.0.1:{self.port}"
        if tls and ca_file is None:
            guess = Path(tls.cert_file).parent / "ca.crt"  # TestCA's layout
            ca_file = guess if guess.is_file() else None
        self.ca_file = ca_file
        self.keys_file = self.workdir / "jwks.json"
        self.config_file = self.workdir / "idp.json"
        self.log_file = self.workdir / "idp.log"
        self.jwks_private: dict = {"keys": [private_jwk(k) for k in (keys or ["RSA"])]}
        _write_private_json(self.keys_file, self.jwks_private)
        self._proc: subprocess.Popen[bytes] | None = None

    def issuer_entry(self) -> dict:
        """The gateway config's `oidc.issuers` entry for this IdP, as the test worlds use it:
        audience `vgate`, the email as the username, both prefixed `oidc:`."""
        return {
            "issuer": self.issuer,
            "audiences": [self.client_id],
            "username_claim": "email",
            "username_prefix": "oidc:",
            "groups_claim": "groups",
            "groups_prefix": "oidc:",
        }

    # ------------------------------------------------------------ process

    @property
    def kid(self) -> str:
        """The current signing key's `kid`."""
        return self.jwks_private["keys"][0]["kid"]

    @property
    def public_jwks(self) -> dict:
        """The JWKS as served on /jwks (public keys)."""
        return {"keys": [public_jwk(k) for k in self.jwks_private["keys"]]}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def clients(self) -> list[dict]:
        """The client metadata handed to oidc-provider."""
        return [
            {
                "client_id": self.client_id,
                "application_type": "native",  # loopback redirect URIs match on any port
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
                "response_types": ["code"],
                "redirect_uris": [
                    "http://127.0.0.1/callback",
                    "http://localhost/callback",
                    "http://127.0.0.1/",
                    "http://localhost/",
                ],
            },
            {
                "client_id": self.portal_client_id,
                "client_secret": self.portal_client_secret,
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "redirect_uris": self.portal_redirect_uris,
                "post_logout_redirect_uris": self.portal_redirect_uris,
            },
            *self.extra_clients,
        ]

    def write_config(self) -> None:
        """(Re)write the server's JSON config from the current attributes."""
        cfg: dict[str, Any] = {
            "issuer": self.issuer,
            "host": "127.0.0.1",
            "port": self.port,
            "keys": str(self.keys_file),
            "store": str(self.workdir / "store.json"),
            "ttl": self.ttl,
            "users": self.users,
            "clients": self.clients(),
        }
        if self.tls:
            cfg["tls"] = {"cert": str(self.tls.cert_file), "key": str(self.tls.key_file)}
        if self.resources is not None:
            cfg["resources"] = self.resources
        _write_private_json(self.config_file, cfg)

    def start(self) -> OIDCProvider:
        """Spawn `node server.mjs` and wait (≤15 s) for its `ready` line."""
        if self.running:
            return self
        ensure_node_modules()
        assert NODE is not None
        self.write_config()
        with self.log_file.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            offset = log.tell()  # before the child shares the file: it may write at once
            self._proc = subprocess.Popen(
                [NODE, str(DEV_IDP_DIR / "server.mjs"), "--config", str(self.config_file)],
                cwd=DEV_IDP_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            _RUNNING.add(self._proc)
        deadline = time.monotonic() + START_TIMEOUT
        want = f"ready {self.issuer}".encode()
        while time.monotonic() < deadline:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                if want in f.read():
                    return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"dev OpenID Provider did not become ready within {START_TIMEOUT:.0f}s "
            f"(exit code {self._proc.returncode}); output:\n{self._log_tail(offset)}"
        )

    def _log_tail(self, offset: int = 0) -> str:
        with self.log_file.open("rb") as f:
            f.seek(offset)
            return f.read()[-4000:].decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after 5 s); a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _RUNNING.discard(proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again: same port, issuer, keys; sessions and tokens survive."""
        self.stop()
        self.start()

    def rotate_keys(self, *, keep_old: bool, kind: str | None = None) -> None:
        """Put a new signing key first (same kind unless `kind`), keep or drop the old ones."""
        new = private_jwk(kind or self.jwks_private["keys"][0]["kty"])
        old = self.jwks_private["keys"] if keep_old else []
        self.jwks_private = {"keys": [new, *old]}
        _write_private_json(self.keys_file, self.jwks_private)
        self.restart()

    def __enter__(self) -> OIDCProvider:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------ HTTP side

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify the IdP with."""
        if self.tls and self.ca_file:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True

    def http_client(self, **kw: Any) -> httpx.Client:
        """An httpx client that trusts the IdP (test CA in TLS mode)."""
        kw.setdefault("timeout", 10.0)
        return httpx.Client(verify=self.verify(), **kw)

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def discovery(self) -> dict:
        """The provider's discovery document."""
        with self.http_client() as c:
            r = c.get(self.discovery_url)
            r.raise_for_status()
            return r.json()

    def _client_auth(self, client_id: str) -> tuple[dict[str, str], httpx.BasicAuth | None]:
        """Body fields and basic auth for the token endpoint."""
        secret = self._secret_for(client_id)
        if secret is None:
            return {"client_id": client_id}, None
        return {}, httpx.BasicAuth(client_id, secret)

    def _secret_for(self, client_id: str) -> str | None:
        for meta in self.clients():
            if meta["client_id"] == client_id:
                return meta.get("client_secret")
        return None

    def _token(self, c: httpx.Client, data: dict[str, str], client_id: str, what: str) -> TokenSet:
        fields, auth = self._client_auth(client_id)
        r = c.post(
            f"{self.issuer}/token", data={**data, **fields}, auth=auth or httpx.USE_CLIENT_DEFAULT
        )
        if r.status_code != 200:
            raise _oauth_error(r, what)
        body = r.json()
        return TokenSet(
            id_token=body.get("id_token", ""),
            access_token=body["access_token"],
            refresh_token=body.get("refresh_token"),
            expires_in=int(body.get("expires_in", 0)),
            raw=body,
        )

    def _walk(
        self,
        c: httpx.Client,
        resp: httpx.Response,
        user: str,
        password: str | None,
        stop_at: str | None,
    ) -> httpx.Response | dict[str, str]:
        """Follow redirects, fill login/consent/device forms, submit form_post pages.

        Returns the callback's parameters once a redirect (or form_post) targets `stop_at`,
        else the final page without a form to fill (e.g. the device flow's success page).
        """
        for _ in range(30):
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if stop_at and location.startswith(stop_at):
                    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
                resp = c.get(location)
                continue
            if resp.status_code != 200:
                m = re.search(r"<strong>error</strong>: ([\w.-]+)", resp.text)
                err = m.group(1) if m else None
                desc = re.search(r"<strong>error_description</strong>: ([^<]*)", resp.text)
                raise OIDCError(
                    f"login flow got {resp.status_code} at {resp.url.path}: "
                    f"{err}: {desc.group(1) if desc else resp.text[:300]}",
                    error=err,
                    status=resp.status_code,
                )
            forms = [f for f in _forms(resp.text) if f["method"] == "post"]
            form = next(
                (
                    f
                    for f in forms
                    if f["fields"].get("prompt") in ("login", "consent")
                    or f["id"] in ("op.deviceConfirmForm", "op.deviceInputForm")
                ),
                None,
            )
            if form is None and forms and "document.forms[0].submit()" in resp.text:
                form = forms[0]  # response_mode=form_post (also the device flow's callback)
            if form is None:
                return resp
            fields = dict(form["fields"])
            action = urljoin(str(resp.url), form["action"])
            if stop_at and action.startswith(stop_at):
                return fields
            if fields.get("prompt") == "login":
                fields["login"] = user
                fields["password"] = (
                    password
                    if password is not None
                    else str(self.users.get(user, {}).get("password", ""))
                )
            resp = c.post(action, data=fields)
            if resp.status_code == 401:
                raise OIDCError(f"login as {user!r} rejected", error="access_denied", status=401)
        raise OIDCError("login flow did not finish within 30 steps")

    def login(
        self,
        user: str,
        *,
        client_id: str = "vgate",
        scopes: str = DEFAULT_SCOPES,
        redirect_uri: str | None = None,
        resource: str | None = None,
        password: str | None = None,
        extra_params: dict[str, str] | None = None,
    ) -> TokenSet:
        """Authorization code + PKCE (S256) through the dev forms, then the code exchange."""
        if redirect_uri is None:
            redirect_uri = (
                DEFAULT_REDIRECT_URI
                if client_id == self.client_id
                else self._redirect_uris(client_id)[0]
            )
        verifier, challenge = _pkce()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        params = {
            "client_id": client_id,
            "response_type": "code",
            "scope": scopes,
            "redirect_uri": redirect_uri,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **(extra_params or {}),
        }
        if resource:
            params["resource"] = resource
        with self.http_client() as c:
            q = self._walk(
                c, c.get(f"{self.issuer}/auth", params=params), user, password, stop_at=redirect_uri
            )
            if not isinstance(q, dict):
                raise OIDCError(f"login flow ended at {q.url} without redirecting back")
            if "error" in q:
                raise OIDCError(
                    f"authorization failed: {q['error']}: {q.get('error_description', '')}",
                    error=q["error"],
                )
            if q.get("state") != state:
                raise OIDCError("state mismatch in the authorization response")
            if q.get("iss") not in (None, self.issuer):
                raise OIDCError(f"iss mismatch in the authorization response: {q.get('iss')}")
            data = {
                "grant_type": "authorization_code",
                "code": q["code"],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
            if resource:
                data["resource"] = resource
            return self._token(c, data, client_id, "code exchange")

    def _redirect_uris(self, client_id: str) -> list[str]:
        for meta in self.clients():
            if meta["client_id"] == client_id:
                return list(meta.get("redirect_uris", []))
        raise KeyError(client_id)

    def refresh(
        self, refresh_token: str, client_id: str = "vgate", *, resource: str | None = None
    ) -> TokenSet:
        """The refresh_token grant (the public client gets a rotated refresh token back)."""
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if resource:
            data["resource"] = resource
        with self.http_client() as c:
            return self._token(c, data, client_id, "refresh")

    # ------------------------------------------------------------ device flow

    def device_authorize(self, *, client_id: str = "vgate", scopes: str = DEFAULT_SCOPES) -> dict:
        """Start a device authorization: device_code, user_code, verification_uri(_complete)."""
        fields, auth = self._client_auth(client_id)
        with self.http_client() as c:
            r = c.post(
                f"{self.issuer}/device/auth",
                data={"scope": scopes, **fields},
                auth=auth or httpx.USE_CLIENT_DEFAULT,
            )
        if r.status_code != 200:
            raise _oauth_error(r, "device authorization")
        return r.json()

    def approve_device(
        self, user: str, verification_uri_complete: str, *, password: str | None = None
    ) -> None:
        """Act as the user's browser: confirm the user code, log in, consent."""
        with self.http_client() as c:
            page = self._walk(c, c.get(verification_uri_complete), user, password, stop_at=None)
        if isinstance(page, dict) or "Sign-in Success" not in page.text:
            raise OIDCError(f"device approval did not succeed: {str(page)[:300]}")

    def device_token(self, device_code: str, *, client_id: str = "vgate") -> TokenSet:
        """One poll of the token endpoint (raises OIDCError authorization_pending etc.)."""
        with self.http_client() as c:
            return self._token(
                c,
                {"grant_type": DEVICE_GRANT, "device_code": device_code},
                client_id,
                "device token",
            )

    def device_login(
        self, user: str, *, client_id: str = "vgate", scopes: str = DEFAULT_SCOPES
    ) -> TokenSet:
        """The whole device flow: authorize, approve as `user`, fetch the tokens."""
        start = self.device_authorize(client_id=client_id, scopes=scopes)
        self.approve_device(user, start["verification_uri_complete"])
        return self.device_token(start["device_code"], client_id=client_id)
