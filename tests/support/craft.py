"""A fault-injection issuer: serves discovery + JWKS and signs arbitrary (also bad) tokens.

The real OpenID Provider (tests/support/oidc.py) only mints good tokens; negative tests
need tokens with a wrong audience, `alg: none`, HMAC keyed with the public key, and so on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


class CraftingIssuer:
    """`issuer` is http://127.0.0.1:PORT; `sign(claims)` returns a token; `down()` stops it."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.keys = {"rsa1": ("RS256", self.rsa), "ec1": ("ES256", self.ec)}
        self.jwks_fetches = 0
        # fault injection: when set, answers a JWKS request itself (writes the whole response)
        self.jwks_fault: Callable[[BaseHTTPRequestHandler], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def _jwks(self) -> dict:
        out = []
        for kid, (alg, key) in self.keys.items():
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig")
            out.append(jwk)
        return {"keys": out}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.issuer, "jwks_uri": issuer.issuer + "/jwks"}
                elif self.path == "/jwks":
                    issuer.jwks_fetches += 1
                    if issuer.jwks_fault is not None:
                        issuer.jwks_fault(self)
                        return
                    body = issuer._jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def start(self) -> CraftingIssuer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def claims(self, **overrides: Any) -> dict:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": "vgate",
            "sub": "u-alice",
            "email": "alice@example.com",
            "groups": ["developers"],
            "iat": now,
            "exp": now + 600,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def sign(
        self,
        claims: dict,
        *,
        kid: str = "rsa1",
        alg: str | None = None,
        headers: dict | None = None,
    ) -> str:
        key_alg, key = self.keys[kid]
        return jwt.encode(
            claims, key, algorithm=alg or key_alg, headers={"kid": kid, **(headers or {})}
        )

    def public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
