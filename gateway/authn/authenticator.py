"""Bearer token → `Identity`, with a verified-token cache keyed by the token's hash."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import time

from gateway.authn import jws
from gateway.authn.errors import AuthError
from gateway.authn.keys import IssuerKeys
from gateway.authn.token_cache import VerifiedTokens
from gateway.authn.verify import IssuerVerifier
from gateway.authn.websocket import websocket_bearer_token
from gateway.config.model import OIDC
from gateway.identity import Identity

log = logging.getLogger("vgate.authn")


def decode_segment(segment: str) -> dict:
    """A JWT header or payload segment (base64url JSON object); ValueError otherwise."""
    padded = segment + "=" * (-len(segment) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def jwt_issuer(token: str) -> str | None:
    """The `iss` of a JWT-shaped token (unverified), "" for a JWT without one, None when
    the token is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = decode_segment(parts[1])
    except (ValueError, UnicodeDecodeError):
        return None
    iss = payload.get("iss")
    return iss if isinstance(iss, str) else ""


class Authenticator:
    """Authenticates `Authorization` header values.

    A token is verified once (signature and every claim); afterwards its SHA-256 maps to
    the `Identity` until the token's `exp`, so repeat requests cost a hash and a lookup.
    """

    def __init__(self, config: OIDC) -> None:
        self.config = config
        self.max_token_bytes = config.max_token_bytes
        self._verifiers: dict[str, IssuerVerifier] = {}
        for issuer in config.issuers:
            keys = IssuerKeys(
                issuer,
                min_interval=config.jwks_refresh_min_interval_seconds,
                max_age=config.jwks_max_age_seconds,
            )
            keys.on_keys_removed = functools.partial(self._forget_issuer, issuer.issuer)
            self._verifiers[issuer.issuer] = IssuerVerifier(issuer, keys)
        self._cache = VerifiedTokens(config.token_cache_size)
        self._cache_enabled = config.token_cache_size > 0
        self._last_hit: tuple[str, Identity] | None = None
        # the last `Authorization` value taken apart, and its token: a client repeats it, and
        # handing out the same str makes the `_last_hit` comparison an identity check
        self._last_header: tuple[bytes, str] | None = None
        self._refresher: asyncio.Task | None = None
        self.hits = 0

    def keys_for(self, issuer: str) -> IssuerKeys:
        """The key set of a configured issuer (shared with the portal; refreshed here)."""
        return self._verifiers[issuer].keys

    @property
    def ready(self) -> bool:
        """True once every issuer has a key set."""
        return all(v.keys.loaded for v in self._verifiers.values())

    async def start(self) -> None:
        """Fetch every issuer's keys now (failures are logged) and keep them fresh."""
        await asyncio.gather(*(v.keys.refresh(force=True) for v in self._verifiers.values()))
        self._refresher = asyncio.create_task(self._refresh_loop(), name="vgate-jwks-refresh")

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        for v in self._verifiers.values():
            await v.keys.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.config.jwks_refresh_min_interval_seconds, 5.0))
            for v in self._verifiers.values():
                if v.keys.stale() or not v.keys.loaded:
                    await v.keys.refresh()

    def token_from_header(
        self, authorization: bytes | None, websocket_protocols: list[bytes] | None = None
    ) -> str:
        """Extract the bearer token; raise `AuthError` if absent, malformed or too large.

        Without an `Authorization` header, a WebSocket upgrade may carry the token in its
        `Sec-WebSocket-Protocol` values (`websocket_protocols`), as kube-apiserver allows.
        """
        if not authorization and websocket_protocols:
            token = websocket_bearer_token(websocket_protocols, max_bytes=self.max_token_bytes)
            if token is not None:
                return token
        if not authorization:
            raise AuthError("missing", "no bearer token")
        last = self._last_header
        if last is not None and last[0] == authorization:
            return last[1]  # the header the last request carried: the same token object
        if len(authorization) > self.max_token_bytes + 7:
            raise AuthError("too_large", f"token larger than {self.max_token_bytes} bytes")
        scheme, _, credential = authorization.partition(b" ")
        if scheme.lower() != b"bearer" or not credential:
            raise AuthError("missing", "authorization is not a bearer token")
        try:
            token = credential.strip().decode("ascii")
        except UnicodeDecodeError:
            raise AuthError("malformed", "token is not ASCII") from None
        self._last_header = (authorization, token)
        return token

    def cached(self, token: str) -> Identity | None:
        """The cached identity for `token`, if it was verified before and has not expired.

        The most recent hit is kept aside: a client sends the same token request after
        request, and comparing strings is cheaper than hashing and a cache lookup."""
        if not self._cache_enabled:
            return None
        last = self._last_hit
        now = time.time()
        if last is not None and last[0] == token and last[1].expires_at > now:
            self.hits += 1
            return last[1]
        identity = self._cache.get(hashlib.sha256(token.encode()).digest(), now)
        if identity is not None:
            self.hits += 1
            self._last_hit = (token, identity)
        return identity

    def issued_here(self, token: str) -> bool:
        """True when `token` is a JWT that names a configured issuer: only this
        authenticator may judge it (it never goes to a tenant's TokenReview)."""
        iss = jwt_issuer(token)
        return iss is not None and iss in self._verifiers

    def _forget_issuer(self, issuer: str) -> None:
        """An issuer withdrew a signing key: tokens it signed must be verified again, so a
        token signed by the withdrawn key stops working now rather than at its `exp`."""
        if self._last_hit is not None and self._last_hit[1].issuer == issuer:
            self._last_hit = None
        dropped = self._cache.drop(lambda identity: identity.issuer != issuer)
        if dropped:
            log.info("issuer %s: dropped %d cached tokens after a key withdrawal", issuer, dropped)

    def verify_now(self, token: str) -> Identity | None:
        """Verify a token that is not cached (signature and every claim) without waiting:
        its `Identity`, remembered until `exp`; `AuthError` when it does not verify; None
        when its issuer's key set must be fetched again first (an unknown `kid`), which
        `authenticate` awaits. The common case, a known key, costs no task or await."""
        try:
            parsed = jws.parse(token)
        except jws.JWSError as exc:
            raise AuthError("malformed", str(exc)) from None
        verifier = self._verifier(parsed)
        key = verifier.key_now(parsed)
        if key is None:
            return None
        return self._remember(token, verifier.check(parsed, key))

    async def authenticate(self, token: str) -> Identity:
        """Verify `token` fully (cache miss path) and remember the result until `exp`."""
        identity = self.cached(token)
        if identity is not None:
            return identity
        identity = self.verify_now(token)
        if identity is not None:
            return identity
        parsed = jws.parse(token)  # well-formed: `verify_now` parsed it
        verifier = self._verifier(parsed)
        return self._remember(token, await verifier.verify(parsed))

    def _verifier(self, parsed: jws.CompactJWS) -> IssuerVerifier:
        issuer = parsed.payload.get("iss")
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None:
            raise AuthError("unknown_issuer", f"issuer {str(issuer)[:128]!r} is not configured")
        return verifier

    def _remember(self, token: str, identity: Identity) -> Identity:
        if self._cache_enabled and identity.expires_at > time.time():
            self._cache.put(hashlib.sha256(token.encode()).digest(), identity)
        return identity
