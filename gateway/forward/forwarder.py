"""Send an exchange to its tenant: reuse a pooled connection or open one, map failures."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from gateway.config.model import Upstream as UpstreamSettings
from gateway.forward.pool import UpstreamPool
from gateway.registry import Upstream

if TYPE_CHECKING:
    from gateway.flow import Flow

log = logging.getLogger("vgate.forward")

_STREAMING_MARKERS = (b"watch=true", b"watch=1", b"follow=true", b"follow=1")


class UpstreamFailure(Exception):
    pass


def is_streaming(target: bytes) -> bool:
    """Watches and `logs -f` run as long as the client wants: no response timeout."""
    _, _, query = target.partition(b"?")
    if b"watch=" not in query and b"follow=" not in query:
        return False  # the common case, without a generator
    return any(m in query for m in _STREAMING_MARKERS)


class Forwarder:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._pools: dict[str, UpstreamPool] = {}
        self._sweeper: asyncio.Task | None = None

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.settings.idle_timeout_seconds / 2, 15.0))
            for pool in list(self._pools.values()):
                pool.sweep()

    def close(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    def forget(self, tenant: str) -> None:
        """The tenant's route changed or went away: stop reusing its connections."""
        pool = self._pools.pop(tenant, None)
        if pool:
            pool.close()

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
            )
            self._pools[upstream.name] = pool
        return pool

    def forward(self, flow: Flow) -> None:
        """Send `flow.upstream_head` (and the body) to `flow.upstream`; the response is
        relayed by callbacks as it arrives."""
        exchange, upstream = flow.exchange, flow.upstream
        assert upstream is not None
        streaming = exchange.upgrade or is_streaming(exchange.target)
        exchange.streaming = streaming
        timeout = None if streaming else self.settings.response_timeout_seconds
        pool = self._pool(upstream)
        conn = None if exchange.upgrade else pool.take_idle()
        if conn is not None:
            conn.send(flow, timeout=timeout)
            return
        task = asyncio.get_running_loop().create_task(
            self._connect_and_send(pool, flow, timeout)
        )
        exchange.client_gone_hook = task.cancel
        _keep(task)

    async def _connect_and_send(self, pool: UpstreamPool, flow: Flow, limit: float | None
                                ) -> None:
        try:
            conn = await pool.connect()
        except TimeoutError:
            self._answer_failure(flow, pool.upstream, "connect timeout", 504)
            return
        except (OSError, ssl.SSLError) as exc:
            self._answer_failure(flow, pool.upstream, f"connect failed: {exc}", 502)
            return
        if flow.exchange.conn.closed:
            conn.close()
            return
        conn.send(flow, timeout=limit)

    def _failed(self, pool: UpstreamPool, flow: Flow, why: str, retry: bool) -> None:
        """A connection failed before any response: retry a stale keep-alive once, or answer."""
        exchange = flow.exchange
        if retry and not pool.closed and not exchange.conn.closed:
            log.debug("request %s: stale keep-alive connection, retrying once",
                      exchange.request_id.decode())
            limit = None if exchange.streaming else self.settings.response_timeout_seconds
            task = asyncio.get_running_loop().create_task(
                self._connect_and_send(pool, flow, limit)
            )
            exchange.client_gone_hook = task.cancel
            _keep(task)
            return
        self._answer_failure(flow, pool.upstream, why, 504 if why == "timeout" else 502)

    def _answer_failure(self, flow: Flow, upstream: Upstream | None, why: str, code: int
                        ) -> None:
        exchange = flow.exchange
        tenant = flow.tenant or "?"
        where = f"{upstream.host}:{upstream.port}" if upstream else "?"
        log.warning("request %s tenant %s upstream %s: %s",
                    exchange.request_id.decode(), tenant, where, why)
        flow.reason = f"upstream {why}"
        if exchange.finished or exchange.conn.closed:
            return
        if exchange.status:
            exchange.conn.abort()
            exchange.finish(reusable=False)
            return
        if code == 504:
            exchange.fail(504, f"the API server of tenant {tenant} did not answer in time")
        else:
            exchange.fail(502, f"the API server of tenant {tenant} is unreachable")


_tasks: set[asyncio.Task] = set()


def _keep(task: asyncio.Task) -> None:
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
