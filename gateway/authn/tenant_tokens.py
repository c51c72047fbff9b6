"""Tenant-native tokens: bearer tokens a tenant's own API server issued (ServiceAccount
tokens for CI, GitOps and operators), checked by a `TokenReview` at that tenant.

Only for tenants with `token_passthrough`, and never for a JWT of a configured OIDC issuer
(the caller routes those to the OIDC verifier). A JWT is reviewed only when its `iss` is the
tenant's ServiceAccount issuer (configured, or read once an hour from the tenant's
`/.well-known/openid-configuration`); a token that is not a JWT at all (a static or
bootstrap token) is reviewed as it is. The review runs at the tenant the request
addresses, with the gateway's credential for it (which needs `create` on
`authentication.k8s.io/tokenreviews`), so a token valid at tenant A is never accepted at
tenant B.

Answers are cached by (tenant, SHA-256 of the token): an authenticated one until the
token's `exp` and at most `cache_seconds`, a rejection for `negative_cache_seconds`; the
cache is bounded, and concurrent reviews of one token share one request. The request then
goes upstream with the token itself, so the tenant's API server authenticates it again on
every request (a deleted ServiceAccount or bound object stops working at once, whatever
this cache holds).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from cachetools import TLRUCache

from gateway.authn.authenticator import decode_segment, jwt_issuer
from gateway.authn.errors import AuthError
from gateway.config.model import TokenReview
from gateway.identity import Identity, usable_names
from gateway.registry import Upstream
from gateway.tenant_api import CredentialRefused, TenantApi

log = logging.getLogger("vgate.authn")

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
DISCOVERY_PATH = "/.well-known/openid-configuration"
ISSUER_RETRY_SECONDS = 30.0
ISSUER_PREFIX = "tokenreview:"  # Identity.issuer of a reviewed token: tokenreview:<tenant>
MAX_GROUPS = 1024


class ReviewUnavailable(Exception):
    """The tenant could not review the token (unreachable, refused the gateway): 503."""


@dataclass(frozen=True, slots=True)
class _Answer:
    identity: Identity | None  # None: the tenant said "not authenticated"
    reason: str
    until: float


class TenantTokens:
    """Reviews tenant-native tokens at their tenant, with a bounded answer cache."""

    def __init__(
        self,
        config: TokenReview,
        api: TenantApi,
        *,
        clock: Callable[[], float] = time.time,
        on_review: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.clock = clock
        self.on_review = on_review or (lambda tenant, result: None)
        self._answers: TLRUCache = TLRUCache(
            maxsize=config.cache_size, ttu=lambda _k, answer, _now: answer.until, timer=clock
        )
        self._inflight: dict[tuple[str, bytes], asyncio.Future[_Answer]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._issuers: dict[str, tuple[Upstream, str | None, float]] = {}
        self.reviews = 0

    @staticmethod
    def _key(upstream: Upstream, token: str) -> tuple[str, bytes]:
        return upstream.name, hashlib.sha256(token.encode()).digest()

    def forget(self, tenant: str) -> None:
        """The tenant's route changed or went away: its answers and issuer are stale."""
        self._issuers.pop(tenant, None)
        for key in [k for k in list(self._answers.keys()) if k[0] == tenant]:
            self._answers.pop(key, None)

    def cached(self, upstream: Upstream, token: str) -> Identity | None:
        """The cached answer: the identity, None when nothing is cached; AuthError when a
        rejection is cached."""
        answer = self._answers.get(self._key(upstream, token))
        if answer is None:
            return None
        if answer.identity is None:
            raise AuthError("tenant_token_rejected", answer.reason)
        return answer.identity

    async def authenticate(self, upstream: Upstream, token: str) -> Identity:
        """Review `token` at `upstream` (one review per token at a time); AuthError (401)
        when the tenant does not authenticate it, ReviewUnavailable when it cannot say."""
        key = self._key(upstream, token)
        answer: _Answer | None = self._answers.get(key)
        if answer is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                task = asyncio.get_running_loop().create_task(
                    self._fill(key, upstream, token, pending)
                )
                self._tasks.add(task)  # referenced until done, even if every waiter left
                task.add_done_callback(self._tasks.discard)
            answer = await asyncio.shield(pending)
        if answer.identity is None:
            raise AuthError("tenant_token_rejected", answer.reason)
        return answer.identity

    async def _fill(
        self,
        key: tuple[str, bytes],
        upstream: Upstream,
        token: str,
        result: asyncio.Future[_Answer],
    ) -> None:
        try:
            answer = await self._review(upstream, token)
        except BaseException as exc:
            result.set_exception(exc)
        else:
            if answer.until > self.clock():
                self._answers[key] = answer
            result.set_result(answer)
        finally:
            self._inflight.pop(key, None)
            if result.done() and not result.cancelled():
                result.exception()  # retrieved: every waiter may have gone

    def _rejected(self, upstream: Upstream, reason: str) -> _Answer:
        self.on_review(upstream.name, "rejected")
        return _Answer(
            None,
            f"tenant {upstream.name}: {reason}",
            self.clock() + self.config.negative_cache_seconds,
        )

    async def _review(self, upstream: Upstream, token: str) -> _Answer:
        iss = jwt_issuer(token)
        if iss is not None:
            expected = await self._issuer(upstream)
            if expected is None:
                return self._rejected(
                    upstream,
                    "a JWT, and the tenant's ServiceAccount issuer is unknown (set "
                    "service_account_issuer, or let the gateway read the tenant's "
                    "/.well-known/openid-configuration)",
                )
            if iss != expected:
                return self._rejected(
                    upstream,
                    f"JWT issuer {iss[:128]!r} is neither a "
                    "configured OIDC issuer nor the tenant's",
                )
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        self.reviews += 1
        try:
            r = await self.api.call(
                upstream,
                "POST",
                REVIEW_PATH,
                body,
                needs="create authentication.k8s.io/tokenreviews",
            )
        except CredentialRefused:
            self.on_review(upstream.name, "error")
            raise
        except httpx.HTTPError as exc:
            self.on_review(upstream.name, "error")
            raise ReviewUnavailable(
                f"TokenReview at {upstream.name} failed: {type(exc).__name__}"
            ) from None
        if r.status_code not in (200, 201):
            self.on_review(upstream.name, "error")
            raise ReviewUnavailable(f"TokenReview at {upstream.name} answered HTTP {r.status_code}")
        try:
            status = r.json().get("status") or {}
        except (ValueError, AttributeError):
            self.on_review(upstream.name, "error")
            raise ReviewUnavailable(f"TokenReview at {upstream.name}: not JSON") from None
        if status.get("authenticated") is not True:
            error = str(status.get("error") or "not authenticated")[:256]
            return self._rejected(upstream, f"TokenReview: {error}")
        try:
            identity = self._identity(upstream, token, status.get("user") or {})
        except ValueError as unusable:
            return self._rejected(upstream, f"TokenReview answer unusable: {unusable}")
        self.on_review(upstream.name, "authenticated")
        return _Answer(identity, "", identity.expires_at)

    def _identity(self, upstream: Upstream, token: str, user: dict) -> Identity:
        name, uid = user.get("username"), user.get("uid") or ""
        groups, extra = user.get("groups") or [], user.get("extra") or {}
        if not isinstance(name, str) or not isinstance(uid, str):
            raise ValueError("username or uid missing")
        usable_names([name, *([uid] if uid else [])], what="username or uid")
        if (
            not isinstance(groups, list)
            or len(groups) > MAX_GROUPS
            or not all(isinstance(g, str) for g in groups)
        ):
            raise ValueError("groups are not a bounded list of strings")
        usable_names(groups, what="group name")
        if not isinstance(extra, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in extra.values()
        ):
            raise ValueError("extra is not a map of string lists")
        until = self.clock() + self.config.cache_seconds
        if jwt_issuer(token) is not None:
            exp = decode_segment(token.split(".")[1]).get("exp")
            if isinstance(exp, int | float) and not isinstance(exp, bool):
                until = min(until, float(exp))
        return Identity(
            username=name,
            uid=uid,
            groups=tuple(groups),
            issuer=ISSUER_PREFIX + upstream.name,
            expires_at=until,
            claims={"extra": extra},
            reviewed_by=upstream.name,
        )

    async def _issuer(self, upstream: Upstream) -> str | None:
        """The `iss` of the tenant's ServiceAccount tokens: configured, or asked from it
        (kept `issuer_cache_seconds`; after a failure, asked again in 30 s)."""
        if upstream.service_account_issuer:
            return upstream.service_account_issuer
        now = self.clock()
        known = self._issuers.get(upstream.name)
        if known is not None and known[0] is upstream and known[2] > now:
            return known[1]
        issuer: str | None = None
        try:
            r = await self.api.call(upstream, "GET", DISCOVERY_PATH, needs=f"get {DISCOVERY_PATH}")
            if r.status_code == 200:
                value = r.json().get("issuer")
                issuer = value if isinstance(value, str) and value else None
            else:
                log.warning(
                    "tenant %s: ServiceAccount issuer discovery answered HTTP %d",
                    upstream.name,
                    r.status_code,
                )
        except CredentialRefused:
            pass  # logged by the tenant API client, with the right it lacks
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning(
                "tenant %s: ServiceAccount issuer discovery failed: %s",
                upstream.name,
                type(exc).__name__,
            )
        ttl = self.config.issuer_cache_seconds if issuer else ISSUER_RETRY_SECONDS
        self._issuers[upstream.name] = (upstream, issuer, now + ttl)
        return issuer
