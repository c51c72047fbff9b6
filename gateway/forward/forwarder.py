"""Send an exchange to its tenant: reuse a pooled connection or open one, map failures."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import TYPE_CHECKING

from gateway.config.model import Upstream as UpstreamSettings
from gateway.forward.connection import HeadLimits
from gateway.forward.failure import Failure, connect_failed
from gateway.forward.health import TenantHealth
from gateway.forward.multiplex_pool import MultiplexPool
from gateway.forward.pool import UpstreamPool
from gateway.metrics import Metrics
from gateway.registry import Upstream
from gateway.streams.capabilities import TenantProtocols
from gateway.streams.session import StreamSession
from gateway.streams.upgrade import StreamRequest

if TYPE_CHECKING:
    from gateway.flow import Flow

log = logging.getLogger("vgate.forward")

_STREAMING_MARKER = re.compile(rb"(?:watch|follow)=(?:true|1)")  # in the query


class UpstreamFailure(Exception):
    pass


def is_streaming(target: bytes) -> bool:
    """Watches and `logs -f` run as long as the client wants (once their head came)."""
    start = target.find(b"?")
    if start < 0:
        return False  # the common case: no query at all
    # one linear scan for the four markers (`bytes in bytes` would first try the operand as
    # an integer and raise, then clear, a TypeError: dearer than the search itself)
    return _STREAMING_MARKER.search(target, start) is not None


class Forwarder:
    """Step 6. Every response head is due within `response_timeout_seconds` and bounded by
    `max_response_head_bytes`/`max_response_headers`; `health` knows the tenants whose
    API server currently rejects the gateway's credential."""

    def __init__(
        self, settings: UpstreamSettings, metrics: Metrics | None = None, *, bridge: bool = True
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        # what each tenant accepts of WebSocket and SPDY (None: no bridging)
        self.protocols = TenantProtocols() if bridge else None
        self.health = TenantHealth(metrics)
        self.head_limits = HeadLimits(
            settings.max_response_head_bytes, settings.max_response_headers
        )
        self._pools: dict[str, UpstreamPool] = {}
        self._multiplexed: dict[str, MultiplexPool] = {}  # HTTP/2, for long-running requests
        self._sweeper: asyncio.Task | None = None
        if metrics is not None:
            metrics.http2_connections.set_function(
                lambda: sum(len(m.connections) for m in self._multiplexed.values())
            )
            metrics.http2_streams.set_function(
                lambda: sum(m.streams() for m in self._multiplexed.values())
            )

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.idle_timeout_seconds / 2, 15.0))
            for pool in list(self._pools.values()):
                pool.sweep()
            for mux in list(self._multiplexed.values()):
                mux.sweep()

    def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for mux in self._multiplexed.values():
            mux.close()
        self._multiplexed.clear()

    def forget(self, tenant: str) -> None:
        """The tenant's route changed or went away: stop reusing its connections."""
        pool = self._pools.pop(tenant, None)
        if pool:
            pool.close()
        mux = self._multiplexed.pop(tenant, None)
        if mux:
            mux.close()
        self.health.answered(tenant)  # a new route or credential: judged afresh
        if self.protocols is not None:
            self.protocols.forget(tenant)

    def _pool(self, upstream: Upstream) -> UpstreamPool:
        pool = self._pools.get(upstream.name)
        if pool is None or pool.upstream is not upstream:
            if pool is not None:
                pool.close()
            pool = UpstreamPool(
                upstream,
                connect_timeout=self.settings.connect_timeout_seconds,
                max_idle=self.settings.max_idle_connections_per_tenant,
                idle_timeout=self.settings.idle_timeout_seconds,
                on_failure=self._failed,
                head_limits=self.head_limits,
                health=self.health,
            )
            self._pools[upstream.name] = pool
        return pool

    def _multiplex_pool(self, upstream: Upstream) -> MultiplexPool:
        mux = self._multiplexed.get(upstream.name)
        if mux is None or mux.upstream is not upstream:
            if mux is not None:
                mux.close()
            mux = MultiplexPool(
                upstream,
                connect_timeout=self.settings.connect_timeout_seconds,
                idle_timeout=self.settings.idle_timeout_seconds,
                max_streams=self.settings.http2_max_streams_per_connection,
                ping_after=self.settings.http2_ping_after_seconds,
                ping_timeout=self.settings.http2_ping_timeout_seconds,
                on_failure=lambda flow, failure: self._failed(self._pool(upstream), flow, failure),
                fallback=self._send_http11,
                head_limits=self.head_limits,
                health=self.health,
            )
            self._multiplexed[upstream.name] = mux
        return mux

    def forward(self, flow: Flow) -> None:
        """Send `flow.upstream_head` (and the body) to `flow.upstream`; the response is
        relayed by callbacks as it arrives. A watch or `logs -f` without a body goes to a TLS
        tenant as an HTTP/2 stream (`MultiplexPool`) when the tenant speaks HTTP/2."""
        exchange, upstream = flow.exchange, flow.upstream
        assert upstream is not None
        exchange.streaming = exchange.upgrade or is_streaming(exchange.target)
        if exchange.upgrade:
            self._plan_stream(flow)
        elif (
            exchange.streaming
            and upstream.multiplex_tls is not None
            and self.settings.http2_for_watches
            and not exchange.body_pending
            and exchange.body_bytes == 0
            and self._multiplex_pool(upstream).forward(
                flow, timeout=self.settings.response_timeout_seconds
            )
        ):
            return
        self._send_http11(flow)

    def _send_http11(self, flow: Flow) -> None:
        exchange, upstream = flow.exchange, flow.upstream
        assert upstream is not None
        timeout = self.settings.response_timeout_seconds
        pool = self._pool(upstream)
        conn = None if exchange.upgrade else pool.take_idle()
        if conn is not None:
            conn.send(flow, timeout=timeout)
            return
        task = asyncio.get_running_loop().create_task(self._connect_and_send(pool, flow, timeout))
        exchange.client_gone_hook = task.cancel
        _keep(task)

    def _plan_stream(self, flow: Flow) -> None:
        """An exec/attach/port-forward upgrade gets a `StreamSession` when it may be bridged
        or is recorded; any other upgrade is tunnelled as it is."""
        if self.protocols is None and flow.recording is None:
            return
        request = StreamRequest.of(flow.target or flow.exchange.target, flow.exchange.head)
        if request is None or flow.tenant is None:
            return
        session = StreamSession(
            request, flow.tenant, protocols=self.protocols, recording=flow.recording
        )
        flow.stream = session
        flow.upstream_head = session.head(flow.upstream_head)

    async def _connect_and_send(self, pool: UpstreamPool, flow: Flow, limit: float) -> None:
        try:
            conn = await pool.connect()
        except TimeoutError:
            self._answer_failure(flow, pool.upstream, Failure("connect timeout", 504))
            return
        except (OSError, ssl.SSLError) as exc:
            self._answer_failure(flow, pool.upstream, connect_failed(pool.upstream.name, exc))
            return
        if flow.exchange.conn.closed:
            conn.close()
            return
        conn.send(flow, timeout=limit)

    def _failed(self, pool: UpstreamPool, flow: Flow, failure: Failure) -> None:
        """A connection failed before any usable response: retry a stale keep-alive once,
        or answer."""
        exchange = flow.exchange
        if failure.retry and not pool.closed and not exchange.conn.closed:
            log.debug("request %s: %s; retrying once", exchange.request_id.decode(), failure.why)
            task = asyncio.get_running_loop().create_task(
                self._connect_and_send(pool, flow, self.settings.response_timeout_seconds)
            )
            exchange.client_gone_hook = task.cancel
            _keep(task)
            return
        self._answer_failure(flow, pool.upstream, failure)

    def _answer_failure(self, flow: Flow, upstream: Upstream | None, failure: Failure) -> None:
        exchange = flow.exchange
        tenant = flow.tenant or "?"
        flow.reason = f"upstream {failure.why}"
        if self.metrics is not None and flow.tenant is not None:
            self.metrics.upstream_errors.labels(flow.tenant).inc()
        if failure.credential:
            self.health.credential_rejected(tenant, exchange.request_id.decode())
        else:
            where = f"{upstream.host}:{upstream.port}" if upstream else "?"
            log.warning(
                "request %s tenant %s upstream %s: %s",
                exchange.request_id.decode(),
                tenant,
                where,
                failure.why,
            )
        if exchange.finished or exchange.conn.closed:
            return
        if exchange.status:
            exchange.conn.abort()
            exchange.finish(reusable=False)
            return
        if failure.message:
            flow.fail(failure.code, failure.message)
        elif failure.code == 504:
            flow.fail(504, f"the API server of tenant {tenant} did not answer in time")
        else:
            flow.fail(failure.code, f"the API server of tenant {tenant} is unreachable")


_tasks: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
