"""An OpenID Provider that signs everyone in at once with an ID token the test crafts.

For what the real IdP (tests/support/oidc.py) never hands out: an ID token for another
audience, one that has already expired, one signed with a key it does not publish. `/auth`
redirects straight back with a code (no forms); `/token` answers that code with an ID
token of `claims(nonce)` plus `overrides`. Discovery and JWKS are real, so the gateway's
verifier checks the token as it would any other. `portal_config` is a gateway config
whose portal signs in there, `crafted_sign_in` walks one sign-in.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

MAX_BODY = 64 * 1024


class CraftedProvider:
    """`issuer` is http://127.0.0.1:PORT; set `overrides` (claims; None removes one) or
    `sign_with_unknown_key` before a sign-in; `token_requests` counts code exchanges."""

    def __init__(
        self, *, email: str = "alice@example.com", groups: tuple[str, ...] = ("developers",)
    ) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.email = email
        self.groups = list(groups)
        self.overrides: dict[str, Any] = {}
        self.sign_with_unknown_key = False
        self.token_requests = 0
        self._codes: dict[str, dict[str, str]] = {}  # code -> the authorization request
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    # -- what it signs --------------------------------------------------------------------

    def id_token(self, request: dict[str, str]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": request.get("client_id", ""),
            "sub": "u-alice",
            "email": self.email,
            "email_verified": True,
            "groups": self.groups,
            "name": "Alice",
            "iat": now,
            "exp": now + 300,
        }
        if request.get("nonce"):
            claims["nonce"] = request["nonce"]
        claims.update(self.overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        if self.sign_with_unknown_key:
            return jwt.encode(
                claims, self.other_key, algorithm="RS256", headers={"kid": "not-published"}
            )
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})

    def _jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid="k1", use="sig", alg="RS256")
        return {"keys": [jwk]}

    def _discovery(self) -> dict:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }

    # -- HTTP -----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        op = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    self._json(200, op._discovery())
                elif url.path == "/jwks":
                    self._json(200, op._jwks())
                elif url.path == "/auth":
                    request = {k: v[0] for k, v in parse_qs(url.query).items()}
                    code = secrets.token_urlsafe(16)
                    op._codes[code] = request
                    back = urlencode(
                        {"code": code, "state": request.get("state", ""), "iss": op.issuer}
                    )
                    self.send_response(302)
                    self.send_header("Location", f"{request.get('redirect_uri', '')}?{back}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if urlsplit(self.path).path != "/token":
                    self._json(404, {"error": "not_found"})
                    return
                op.token_requests += 1
                request = op._codes.pop(form.get("code", ""), None)
                if request is None:
                    self._json(
                        400, {"error": "invalid_grant", "error_description": "unknown or used code"}
                    )
                    return
                self._json(
                    200,
                    {
                        "access_token": secrets.token_urlsafe(16),
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "id_token": op.id_token(request),
                    },
                )

        return Handler

    def start(self) -> CraftedProvider:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CraftedProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def portal_config(base: Path, issuer: str, port: int, **portal: object) -> dict:
    """A plain-HTTP gateway whose portal signs in at `issuer`; one tenant policy."""
    policies = base / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "tenant1.yaml").write_text(
        yaml.safe_dump({"tenant": "tenant1", "roles": {"view": {"groups": ["oidc:developers"]}}})
    )
    (base / "portal-secret").write_text(secrets.token_urlsafe(32) + "\n")
    (base / "cookie-secret").write_text(secrets.token_urlsafe(48) + "\n")
    return {
        "listen": {"host": "127.0.0.1", "port": port},
        "oidc": {
            "issuers": [
                {
                    "issuer": issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "username_prefix": "oidc:",
                    "groups_claim": "groups",
                    "groups_prefix": "oidc:",
                }
            ]
        },
        "policies": str(policies),
        "portal": {
            "issuer": issuer,
            "client_id": "vgate-portal",
            "client_secret_file": str(base / "portal-secret"),
            "cookie_secret_file": str(base / "cookie-secret"),
            "public_url": f"http://127.0.0.1:{port}",
            "insecure_http": True,
            "session_store_file": str(base / "sessions.db"),
            **portal,
        },
    }


def crafted_sign_in(url: str, c: httpx.Client) -> httpx.Response:
    """/login -> the crafted OP -> the callback; the callback's answer."""
    r = c.get(url + "/login")
    assert r.status_code == 302, r.text
    r = c.get(r.headers["location"])  # the OP redirects straight back
    assert r.status_code == 302
    return c.get(r.headers["location"])
