"""The gateway: route → authn → groups → policy → rewrite → forward → record, for each
exchange."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.authn import Authenticator, AuthError
from gateway.directory import Directory, DirectoryUnavailable, Membership, lookup_value
from gateway.forward import Forwarder
from gateway.http.asgi import AsgiBridge
from gateway.http.client_address import ClientAddress
from gateway.http.exchange import Exchange
from gateway.identity import Deny, Grant, Identity
from gateway.policy import PolicyEngine
from gateway.policy.nested import (
    BadImpersonation,
    NestedImpersonation,
    Requested,
    ReviewUnavailable,
    requested_identity,
)
from gateway.record import Recorder
from gateway.registry import TenantRegistry, Upstream
from gateway.rewrite import impersonation_block, upstream_head
from gateway.route import Refused, Router

log = logging.getLogger("vgate.app")

_WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="vgate"')
_INVALID_TOKEN = (b"WWW-Authenticate", b'Bearer realm="vgate", error="invalid_token"')


_DISCOVERY_PATHS = (b"/api", b"/apis", b"/version")


def _is_discovery(exchange: Exchange) -> bool:
    """Discovery requests (which kubectl makes before anything else)."""
    path = (exchange.upstream_target or b"").partition(b"?")[0].rstrip(b"/")
    accept = exchange.header(b"accept") or b""
    return path in _DISCOVERY_PATHS or b"apidiscovery.k8s.io" in accept


def _forbidden(exchange: Exchange, message: str) -> None:
    """403 with `message`: a `Status`, except for discovery requests, where client-go cannot
    decode a Status and would print "unknown"; a text body it shows, so kubectl users see why."""
    if _is_discovery(exchange):
        exchange.respond(403, message.encode(), content_type=b"text/plain; charset=utf-8")
    else:
        exchange.fail(403, message)


@dataclass
class Readiness:
    config_loaded: bool = False
    draining: bool = False


class Gateway:
    """Dispatches exchanges. Cheap cases (a cached token, an idle upstream connection)
    complete synchronously; a task is created only when something must be awaited."""

    def __init__(
        self,
        *,
        router: Router,
        registry: TenantRegistry,
        authenticator: Authenticator,
        policy: PolicyEngine,
        forwarder: Forwarder,
        recorder: Recorder,
        client_address: ClientAddress | None = None,
        nested: NestedImpersonation | None = None,
        local_apps: AsgiBridge | None = None,
        directory: Directory | None = None,
    ) -> None:
        self.router = router
        self.local_apps = local_apps or AsgiBridge()
        self.registry = registry
        self.authenticator = authenticator
        self.policy = policy
        self.forwarder = forwarder
        self.recorder = recorder
        self.client_address = client_address if client_address and client_address.trusted else None
        self.directory = directory
        self.readiness = Readiness()
        self.wake_timeout = 60.0
        self._tasks: set[asyncio.Task] = set()
        self.nested = nested
        registry.on_change(forwarder.forget)
        if nested is not None:
            registry.on_change(nested.forget)

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, exchange: Exchange) -> None:
        if self.client_address is not None:
            exchange.source, exchange.forwarded_for = self.client_address.resolve(
                exchange.conn.peer,
                exchange.head.forwarded_for,
            )
        route = self.router.route(exchange.host, exchange.target)
        if route is None:
            self._local(exchange)
            return
        if isinstance(route, Refused):
            exchange.decision = "refused"
            exchange.reason = route.message
            exchange.fail(route.code, route.message)
            return
        exchange.upstream_target = route.target
        upstream = self.registry.get(route.tenant)
        if upstream is None:
            # not recorded as a tenant: metrics are labelled by tenant, and names in
            # requests are the client's choice (the audit reason keeps it)
            exchange.decision = "refused"
            exchange.reason = f"unknown tenant {route.tenant[:63]!r}"
            exchange.fail(404, f'tenant "{route.tenant}" not found')
            return
        exchange.tenant = route.tenant
        authorization = exchange.head.authorization
        protocols = None
        if authorization is None and exchange.upgrade:
            protocols = exchange.head.websocket_protocols
        try:
            token = self.authenticator.token_from_header(authorization, protocols)
        except AuthError as exc:
            self._auth_failed(exchange, exc)
            return
        identity = self.authenticator.cached(token)
        if identity is not None:
            self.recorder.metrics.tally.token_cache_hits += 1
            self._groups(exchange, upstream, identity)
            return
        self.recorder.metrics.tally.token_cache_misses += 1
        self._spawn(exchange, self._authenticate_then_forward(exchange, upstream, token))

    def _spawn(self, exchange: Exchange, step: Coroutine[Any, Any, None]) -> None:
        """Run an awaiting step of `exchange`; the client leaving cancels it."""
        task = asyncio.get_running_loop().create_task(step)
        exchange.client_gone_hook = task.cancel
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _resumed(exchange: Exchange) -> bool:
        """After a spawned step's await: False if the client has gone (nothing more to do),
        else True, and the step is no longer cancellable by the client leaving."""
        if exchange.conn.closed:
            return False
        exchange.client_gone_hook = None
        return True

    async def _authenticate_then_forward(
        self, exchange: Exchange, upstream: Upstream, token: str
    ) -> None:
        try:
            identity = await self.authenticator.authenticate(token)
        except AuthError as exc:
            self._auth_failed(exchange, exc)
            return
        except Exception:
            log.exception("authentication crashed")
            exchange.fail(500, "internal error while authenticating")
            return
        if not self._resumed(exchange):
            return
        self._groups(exchange, upstream, identity)

    # -- step 3: directory groups ----------------------------------------------------------

    def _groups(self, exchange: Exchange, upstream: Upstream, identity: Identity) -> None:
        """Without a directory, straight to policy. With one: a cached answer continues
        synchronously; a miss awaits one lookup in a task; no answer → 503."""
        if self.directory is None:
            self._authorize(exchange, upstream, identity)
            return
        value = lookup_value(identity, self.directory.config.user_claim)
        if value is None:
            exchange.identity = identity
            self._directory_refused(
                exchange, upstream, f"token has no {self.directory.config.user_claim!r} claim "
                "to find the user in the directory")
            return
        try:
            membership = self.directory.cached(value)
        except DirectoryUnavailable as exc:
            exchange.identity = identity
            self._directory_down(exchange, exc)
            return
        if membership is not None:
            self._authorize(exchange, upstream, identity, membership)
            return
        self._spawn(exchange, self._lookup_then_forward(exchange, upstream, identity, value))

    async def _lookup_then_forward(
        self, exchange: Exchange, upstream: Upstream, identity: Identity, value: str
    ) -> None:
        assert self.directory is not None
        try:
            membership = await self.directory.membership(value)
        except DirectoryUnavailable as exc:
            exchange.identity = identity
            self._directory_down(exchange, exc)
            return
        except Exception:
            log.exception("directory lookup crashed")
            exchange.fail(500, "internal error while reading directory groups")
            return
        if not self._resumed(exchange):
            return
        self._authorize(exchange, upstream, identity, membership)

    def _directory_down(self, exchange: Exchange, exc: DirectoryUnavailable) -> None:
        exchange.decision = "unavailable"
        exchange.reason = str(exc)
        exchange.fail(503, "the gateway cannot read your groups from the directory right "
                           "now; try again shortly", extra=[(b"Retry-After", b"5")])

    def _directory_refused(self, exchange: Exchange, upstream: Upstream, reason: str) -> None:
        self._deny(exchange, upstream, reason, f'user has no access to tenant "{upstream.name}"')

    def _deny(self, exchange: Exchange, upstream: Upstream, reason: str, message: str) -> None:
        """Refused by policy: the reason to the audit log, `message` to the client (403)."""
        exchange.decision = "deny"
        exchange.reason = reason
        self.recorder.metrics.denials.labels(upstream.name).inc()
        _forbidden(exchange, message)

    def _auth_failed(self, exchange: Exchange, exc: AuthError) -> None:
        exchange.decision = "unauthenticated" if exc.code == 401 else "refused"
        exchange.reason = exc.detail
        self.recorder.metrics.auth_failures.labels(exc.reason).inc()
        if exc.code == 401:
            header = _WWW_AUTHENTICATE if exc.reason == "missing" else _INVALID_TOKEN
            exchange.fail(401, "Unauthorized", extra=[header])
        else:
            exchange.fail(403, "the identity in this token may not be used through this gateway")

    def _authorize(self, exchange: Exchange, upstream: Upstream, identity: Identity,
                   membership: Membership | None = None) -> None:
        exchange.identity = identity
        exchange.directory = membership
        decision = (self.policy.decide(identity, upstream.name) if membership is None
                    else self.policy.decide(identity, upstream.name, membership))
        if isinstance(decision, Deny):
            self._deny(exchange, upstream, decision.reason,
                       f'user "{identity.username}" has no access to tenant "{upstream.name}"')
            return
        if exchange.head.impersonation:
            self._nested(exchange, upstream, decision)
            return
        self._forward(exchange, upstream, decision)

    def _nested(self, exchange: Exchange, upstream: Upstream, grant: Grant) -> None:
        """`kubectl --as`: refused, or checked by SubjectAccessReview when enabled."""
        if self.nested is None:
            exchange.decision = "deny"
            exchange.reason = "client sent Impersonate-* headers"
            _forbidden(exchange, "impersonation (kubectl --as/--as-group/--as-uid) is not "
                                 "allowed through the vgate gateway")
            return
        try:
            requested = requested_identity(exchange.headers)
        except BadImpersonation as exc:
            exchange.decision = "refused"
            exchange.reason = str(exc)
            exchange.fail(400, f"invalid impersonation request: {exc}")
            return
        self._spawn(exchange, self._nested_then_forward(exchange, upstream, grant, requested))

    async def _nested_then_forward(self, exchange: Exchange, upstream: Upstream, grant: Grant,
                                   requested: Requested) -> None:
        assert self.nested is not None
        exchange.grant = grant
        try:
            decision = await self.nested.decide(upstream, grant, requested)
        except ReviewUnavailable as exc:
            exchange.decision = "refused"
            exchange.reason = str(exc)
            exchange.fail(503, "the tenant's API server could not check the impersonation "
                               "request; try again", extra=[(b"Retry-After", b"1")])
            return
        except Exception:
            log.exception("nested impersonation check crashed")
            exchange.fail(500, "internal error while checking impersonation")
            return
        if not self._resumed(exchange):
            return
        if isinstance(decision, Deny):
            exchange.decision = "deny"
            exchange.reason = decision.reason
            _forbidden(exchange, decision.reason)
            return
        self._forward(exchange, upstream, decision)

    def _forward(self, exchange: Exchange, upstream: Upstream, grant: Grant) -> None:
        if upstream.paused:
            self._paused(exchange, upstream, grant)
            return
        self.registry.activity[upstream.name] = time.time()
        exchange.grant = grant
        exchange.decision = "allow"
        if exchange.chunked_in:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif exchange.content_length:
            framing = b"Content-Length: %d\r\n" % exchange.content_length
        else:
            framing = b""
        exchange.continue_if_expected()
        head = upstream_head(
            exchange.method,
            exchange.upstream_target or b"/",
            exchange.head,
            authority=upstream.authority,
            authorization=upstream.authorization() if upstream.authorization else None,
            identity_block=impersonation_block(grant),
            request_id=exchange.request_id,
            framing=framing,
            upgrade=exchange.head.upgrade if exchange.upgrade else None,
            forwarded_for=exchange.forwarded_for or exchange.conn.peer.encode() or None,
        )
        self.forwarder.forward(exchange, upstream, head)
        if exchange.streaming:
            self.recorder.stream_opened(exchange)

    def _paused(self, exchange: Exchange, upstream: Upstream, grant: Grant) -> None:
        """A paused tenant: 503, or (auto-wake) hold the request until it runs again."""
        if upstream.wake is None:
            exchange.decision = "paused"
            exchange.reason = "tenant paused"
            exchange.fail(503, f'tenant "{upstream.name}" is paused; ask a platform '
                               "administrator to resume it")
            return
        self._spawn(exchange, self._wake(exchange, upstream, grant))

    async def _wake(self, exchange: Exchange, upstream: Upstream, grant: Grant) -> None:
        assert upstream.wake is not None
        try:
            async with asyncio.timeout(self.wake_timeout):
                woke = await upstream.wake()
        except TimeoutError:
            woke = False
        except Exception:
            log.exception("waking tenant %s failed", upstream.name)
            woke = False
        if not self._resumed(exchange):
            return
        current = self.registry.get(upstream.name)
        if woke and current is not None and not current.paused:
            self._forward(exchange, current, grant)
            return
        exchange.decision = "paused"
        exchange.reason = "tenant waking up"
        if current is None:
            exchange.fail(404, f'tenant "{upstream.name}" not found')
            return
        exchange.fail(503, f'tenant "{upstream.name}" is starting; retry shortly',
                      extra=[(b"Retry-After", b"10")])

    def done(self, exchange: Exchange) -> None:
        try:
            self.recorder.record(exchange)
        except Exception:
            log.exception("recording failed")

    # -- the gateway's own endpoints -------------------------------------------------------

    def _local(self, exchange: Exchange) -> None:
        path = exchange.target.partition(b"?")[0]
        exchange.decision = "local"
        if path in (b"/healthz", b"/livez"):
            exchange.respond(200, b"ok", content_type=b"text/plain")
        elif path == b"/readyz":
            ready = (self.readiness.config_loaded and self.authenticator.ready
                     and not self.readiness.draining)
            if ready:
                exchange.respond(200, b"ok", content_type=b"text/plain")
            else:
                why = b"draining" if self.readiness.draining else b"signing keys not loaded"
                exchange.respond(503, b"not ready: " + why, content_type=b"text/plain")
        elif path == b"/metrics":
            exchange.respond(200, generate_latest(self.recorder.metrics.registry),
                             content_type=CONTENT_TYPE_LATEST.encode())
        elif not self.local_apps.handle(exchange):  # mounted ASGI apps: portal, admin API
            exchange.fail(404, "not found: address a tenant by hostname or by path prefix")
