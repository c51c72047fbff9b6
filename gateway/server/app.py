"""The gateway: route → authn → policy → rewrite → forward → record, for each exchange."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.authn import Authenticator, AuthError
from gateway.forward import Forwarder
from gateway.identity import Deny, Grant, Identity
from gateway.policy import PolicyEngine
from gateway.record import Recorder
from gateway.registry import TenantRegistry, Upstream
from gateway.rewrite import client_impersonation, impersonation_block, upstream_head
from gateway.route import Refused, Router
from gateway.server.exchange import Exchange

log = logging.getLogger("vgate.app")

_WWW_AUTHENTICATE = (b"WWW-Authenticate", b'Bearer realm="vgate"')
_INVALID_TOKEN = (b"WWW-Authenticate", b'Bearer realm="vgate", error="invalid_token"')


_DISCOVERY_PATHS = (b"/api", b"/apis", b"/version")


def _is_discovery(exchange: Exchange) -> bool:
    """Discovery requests (which kubectl makes before anything else)."""
    path = (exchange.upstream_target or b"").partition(b"?")[0].rstrip(b"/")
    accept = exchange.header(b"accept") or b""
    return path in _DISCOVERY_PATHS or b"apidiscovery.k8s.io" in accept


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
    ) -> None:
        self.router = router
        self.registry = registry
        self.authenticator = authenticator
        self.policy = policy
        self.forwarder = forwarder
        self.recorder = recorder
        self.readiness = Readiness()
        self._tasks: set[asyncio.Task] = set()
        registry.on_change(forwarder.forget)

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, exchange: Exchange) -> None:
        route = self.router.route(exchange.host, exchange.target)
        if route is None:
            self._local(exchange)
            return
        if isinstance(route, Refused):
            exchange.decision = "refused"
            exchange.reason = route.message
            exchange.fail(route.code, route.message)
            return
        exchange.tenant = route.tenant
        exchange.upstream_target = route.target
        upstream = self.registry.get(route.tenant)
        if upstream is None:
            exchange.decision = "refused"
            exchange.reason = "unknown tenant"
            exchange.fail(404, f'tenant "{route.tenant}" not found')
            return
        try:
            token = self.authenticator.token_from_header(exchange.header(b"authorization"))
        except AuthError as exc:
            self._auth_failed(exchange, exc)
            return
        identity = self.authenticator.cached(token)
        if identity is not None:
            self.recorder.metrics.token_cache_hit.inc()
            self._authorize(exchange, upstream, identity)
            return
        self.recorder.metrics.token_cache_miss.inc()
        task = asyncio.get_running_loop().create_task(
            self._authenticate_then_forward(exchange, upstream, token)
        )
        exchange.client_gone_hook = task.cancel
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        if exchange.conn.closed:
            return
        exchange.client_gone_hook = None
        self._authorize(exchange, upstream, identity)

    def _auth_failed(self, exchange: Exchange, exc: AuthError) -> None:
        exchange.decision = "unauthenticated" if exc.code == 401 else "refused"
        exchange.reason = exc.detail
        self.recorder.metrics.auth_failures.labels(exc.reason).inc()
        if exc.code == 401:
            header = _WWW_AUTHENTICATE if exc.reason == "missing" else _INVALID_TOKEN
            exchange.fail(401, "Unauthorized", extra=[header])
        else:
            exchange.fail(403, "the identity in this token may not be used through this gateway")

    def _authorize(self, exchange: Exchange, upstream: Upstream, identity: Identity) -> None:
        exchange.identity = identity
        decision = self.policy.decide(identity, upstream.name)
        if isinstance(decision, Deny):
            exchange.decision = "deny"
            exchange.reason = decision.reason
            self.recorder.metrics.denials.labels(upstream.name).inc()
            message = f'user "{identity.username}" has no access to tenant "{upstream.name}"'
            if _is_discovery(exchange):
                # client-go's discovery cannot decode a Status and would print "unknown";
                # for a text body it shows the message, so kubectl users see why.
                exchange.respond(403, message.encode(), content_type=b"text/plain; charset=utf-8")
            else:
                exchange.fail(403, message)
            return
        if client_impersonation(exchange.headers):
            exchange.decision = "deny"
            exchange.reason = "client sent Impersonate-* headers"
            exchange.fail(
                403,
                "impersonation (kubectl --as/--as-group/--as-uid) is not allowed through "
                "the vgate gateway",
            )
            return
        self._forward(exchange, upstream, decision)

    def _forward(self, exchange: Exchange, upstream: Upstream, grant: Grant) -> None:
        exchange.grant = grant
        exchange.decision = "allow"
        if exchange.chunked_in:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif exchange.content_length:
            framing = b"Content-Length: %d\r\n" % exchange.content_length
        else:
            framing = b""
        if exchange.header(b"expect") is not None and not exchange.body_done:
            exchange.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        head = upstream_head(
            exchange.method,
            exchange.upstream_target or b"/",
            exchange.headers,
            authority=upstream.authority,
            authorization=upstream.authorization() if upstream.authorization else None,
            identity_block=impersonation_block(grant),
            request_id=exchange.request_id,
            framing=framing,
            upgrade=exchange.header(b"upgrade") if exchange.upgrade else None,
            forwarded_for=exchange.conn.peer.encode() or None,
        )
        self.forwarder.forward(exchange, upstream, head)
        if exchange.streaming:
            self.recorder.stream_opened(exchange)

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
        else:
            exchange.fail(404, "not found: address a tenant by hostname or by path prefix")
