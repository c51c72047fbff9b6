"""An issuer's signing keys: OIDC discovery + JWKS, cached, refetched on unknown `kid`."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.authn.errors import AuthError
from gateway.config.model import Issuer

log = logging.getLogger("vgate.authn")

MAX_DOCUMENT_BYTES = 512 * 1024
# a whole refresh (discovery + JWKS) gives up after this long, however the IdP dribbles its
# answer: only requests that need a key the set does not have wait for it
FETCH_DEADLINE_SECONDS = 10.0


class IssuerKeys:
    """Holds the current JWKS of one issuer.

    Keys are fetched at start and refreshed in the background; an unknown `kid` triggers
    a refetch at most once per `min_interval`. When the IdP is unreachable the last good
    key set keeps being used, so tokens signed by known keys still validate.
    """

    def __init__(self, issuer: Issuer, *, min_interval: float, max_age: float) -> None:
        self.issuer = issuer
        self.min_interval = min_interval
        self.max_age = max_age
        self._keys: dict[str | None, _Key] = {}
        self._fingerprints: frozenset[str] = frozenset()
        self.on_keys_removed: Callable[[], None] | None = None
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self._jwks_uri: str | None = None
        self.fetch_deadline = FETCH_DEADLINE_SECONDS
        verify: ssl.SSLContext | bool = True
        if issuer.ca_file:
            verify = ssl.create_default_context(cafile=str(issuer.ca_file))
        self._http = httpx.AsyncClient(verify=verify, timeout=5.0, follow_redirects=False)

    @property
    def loaded(self) -> bool:
        return bool(self._keys)

    async def close(self) -> None:
        await self._http.aclose()

    async def _get_json(self, url: str) -> dict:
        async with self._http.stream("GET", url, headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"GET {url}: HTTP {resp.status_code}")
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise RuntimeError(f"GET {url}: document larger than {MAX_DOCUMENT_BYTES}")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise RuntimeError(f"GET {url}: not a JSON object")
        return data

    async def _fetch(self) -> None:
        if self._jwks_uri is None:
            url = self.issuer.discovery_url or (
                self.issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
            )
            meta = await self._get_json(url)
            if meta.get("issuer") != self.issuer.issuer:
                raise RuntimeError(
                    f"discovery document names issuer {meta.get('issuer')!r}, "
                    f"expected {self.issuer.issuer!r}"
                )
            jwks_uri = meta.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
                raise RuntimeError("discovery document has no usable jwks_uri")
            self._jwks_uri = jwks_uri
        jwks = await self._get_json(self._jwks_uri)
        entries = jwks.get("keys")
        if not isinstance(entries, list):
            raise RuntimeError('JWKS has no "keys" list')
        keys: dict[str | None, _Key] = {}
        fingerprints: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if not isinstance(entry.get("kid", ""), str):
                log.warning("issuer %s: skipping a JWK whose kid is no string", self.issuer.issuer)
                continue
            if entry.get("kty") == "oct":  # symmetric keys are never accepted
                continue
            try:
                key = jwt.PyJWK(entry)
            except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
                log.warning(
                    "issuer %s: skipping unusable JWK %s: %s",
                    self.issuer.issuer,
                    entry.get("kid"),
                    exc,
                )
                continue
            keys[entry.get("kid")] = _Key(key.key, entry.get("alg"), entry["kty"], entry.get("crv"))
            fingerprints.add(json.dumps(entry, sort_keys=True))
        if not keys:
            raise RuntimeError("JWKS has no usable signing keys")
        removed = bool(self._fingerprints - fingerprints)
        self._keys = keys
        self._fingerprints = frozenset(fingerprints)
        if removed:
            log.info("issuer %s: signing keys were withdrawn", self.issuer.issuer)
            if self.on_keys_removed is not None:
                self.on_keys_removed()
        self._fetched_at = time.monotonic()
        log.info("issuer %s: loaded %d signing keys", self.issuer.issuer, len(keys))

    async def refresh(self, *, force: bool = False) -> bool:
        """Refetch unless one ended within `min_interval`; True if keys changed hands.

        Never raises: a failed, malformed or too slow (`fetch_deadline`, the whole refresh)
        answer keeps the last good key set. The interval counts from the end of the last
        attempt, so callers queued behind a slow fetch do not each start another."""
        async with self._lock:
            if not force and time.monotonic() - self._attempted_at < self.min_interval:
                return False
            try:
                async with asyncio.timeout(self.fetch_deadline):
                    await self._fetch()
                return True
            except (httpx.HTTPError, RuntimeError, ValueError, OSError) as exc:
                why = f"no answer within {self.fetch_deadline:g} s"
                if not isinstance(exc, TimeoutError):  # httpx's timeouts have no message
                    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                log.warning(
                    "issuer %s: key refresh failed (keeping %d cached keys): %s",
                    self.issuer.issuer,
                    len(self._keys),
                    why,
                )
                self._jwks_uri = None if not self._keys else self._jwks_uri
                return False
            finally:
                self._attempted_at = time.monotonic()

    def stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self.max_age

    async def key_for(self, kid: str | None, alg: str) -> PublicKey:
        """The key to verify a token with header `kid`/`alg`; refetches once on a miss. The
        key set is looked at again after `refresh` whatever it did: a caller that waited for
        another caller's fetch (or was rate-limited behind it) finds the keys it brought."""
        key = self._lookup(kid, alg)
        if key is None:
            await self.refresh()
            key = self._lookup(kid, alg)
        if key is None:
            if not self._keys:  # the gateway's trouble, not the token's: 503, not 401
                raise AuthError(
                    "idp_unavailable", f"no keys loaded for {self.issuer.issuer}", code=503
                )
            raise AuthError("unknown_key", f"no key {kid!r} for alg {alg} at {self.issuer.issuer}")
        return key.key

    def key_now(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for `kid`/`alg` if the key set has it; None when `key_for` must be
        awaited (it refetches once, or says why there is no key)."""
        key = self._lookup(kid, alg)
        return None if key is None else key.key

    def _lookup(self, kid: str | None, alg: str) -> _Key | None:
        if kid is not None:
            key = self._keys.get(kid)
            return key if key is not None and _fits(key, alg) else None
        fitting = [k for k in self._keys.values() if _fits(k, alg)]
        return fitting[0] if len(fitting) == 1 else None


PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


@dataclass(frozen=True, slots=True)
class _Key:
    key: PublicKey
    alg: str | None
    kty: str
    crv: str | None


def _fits(key: _Key, alg: str) -> bool:
    """A key only verifies algorithms of its own type, curve, and pinned `alg` if it has one."""
    if key.alg and key.alg != alg:
        return False
    if key.kty == "RSA":
        return alg.startswith(("RS", "PS"))
    if key.kty == "EC":
        return _CURVES.get(alg) == key.crv
    if key.kty == "OKP":
        return alg == "EdDSA"
    return False
