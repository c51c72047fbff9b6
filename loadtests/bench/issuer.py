"""A local OIDC issuer for the bench: one RS256 (or ES256) key, static discovery + JWKS
documents (served by the upstream nginx), and fast bulk minting of distinct signed tokens."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

AUDIENCE = "vgate"
GROUP = "bench-users"
KID = "bench-rsa-1"


class LocalIssuer:
    """`issuer` is the URL under which the upstream nginx serves `documents()`; `alg` is
    RS256 (a 2048-bit RSA key) or ES256 (a P-256 key)."""

    def __init__(self, issuer: str, alg: str = "RS256") -> None:
        self.issuer = issuer
        self.alg = alg
        self.key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg == "RS256"
            else ec.generate_private_key(ec.SECP256R1())
        )

    def documents(self) -> dict[str, bytes]:
        """Relative path (under the issuer URL) → body."""
        jwk = json.loads(
            jwt.algorithms.get_default_algorithms()[self.alg].to_jwk(self.key.public_key())
        )
        jwk.update(kid=KID, use="sig", alg=self.alg)
        discovery = {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "id_token_signing_alg_values_supported": [self.alg],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }
        return {
            ".well-known/openid-configuration": json.dumps(discovery).encode(),
            "jwks": json.dumps({"keys": [jwk]}).encode(),
        }

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def token(self, n: int, *, ttl: int = 3600, groups: list[str] | None = None) -> str:
        """One token; `groups` replaces the default groups (e.g. to be refused)."""
        return _sign(self.private_pem(), self.issuer, n, ttl, groups, self.alg)

    def mint(self, count: int, *, start: int = 0, ttl: int = 3600) -> list[str]:
        """`count` distinct tokens (100 users, each token with its own jti), in parallel."""
        pem = self.private_pem()
        workers = max(1, min(os.cpu_count() or 1, 4))
        chunks = [
            (pem, self.issuer, lo, min(lo + 2000, start + count), ttl, self.alg)
            for lo in range(start, start + count, 2000)
        ]
        if workers == 1 or count < 2000:
            return [t for c in chunks for t in _sign_range(*c)]
        with ProcessPoolExecutor(workers) as pool:
            return [t for part in pool.map(_sign_range, *zip(*chunks, strict=True)) for t in part]


def _sign_range(
    pem: bytes, issuer: str, lo: int, hi: int, ttl: int, alg: str = "RS256"
) -> list[str]:
    key = serialization.load_pem_private_key(pem, password=None)
    return [_sign_with(key, issuer, n, ttl, alg=alg) for n in range(lo, hi)]


def _sign(
    pem: bytes, issuer: str, n: int, ttl: int, groups: list[str] | None = None, alg: str = "RS256"
) -> str:
    key = serialization.load_pem_private_key(pem, password=None)
    return _sign_with(key, issuer, n, ttl, groups, alg)


def _sign_with(
    key: object, issuer: str, n: int, ttl: int, groups: list[str] | None = None, alg: str = "RS256"
) -> str:
    now = int(time.time())
    user = n % 100
    claims = {
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": f"bench-user-{user:03d}",
        "email": f"bench-user-{user:03d}@example.com",
        "email_verified": True,
        "groups": groups if groups is not None else [GROUP, "developers", f"team-{user % 7}"],
        "iat": now,
        "nbf": now - 5,
        "exp": now + ttl,
        "jti": f"bench-{n}-{os.getpid()}",
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": KID})


def write_tokens(path: Path, tokens: list[str]) -> Path:
    path.write_text("\n".join(tokens) + "\n")
    return path
