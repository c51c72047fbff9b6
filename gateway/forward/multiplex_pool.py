"""The HTTP/2 connections to one tenant's API server that carry its long-running requests."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.forward.connection import HeadLimits
from gateway.forward.failure import Failure, connect_failed
from gateway.forward.health import TenantHealth
from gateway.forward.multiplex import MultiplexConnection, NotMultiplexed
from gateway.forward.pool import dial
from gateway.registry import Upstream

if TYPE_CHECKING:
    from gateway.flow import Flow

log = logging.getLogger("vgate.forward")

#: streams a new connection is expected to take before its SETTINGS say (RFC 9113 §6.5.2
#: recommends at least 100): how many waiting requests one connect under way covers
_EXPECTED_STREAMS = 100
#: `_open`'s answer when the tenant chose HTTP/1.1
_NOT_MULTIPLEXED = Failure("the tenant did not choose HTTP/2")
#: how long a tenant that chose HTTP/1.1 is taken at its word before a watch asks again: its
#: API server (or a proxy in front of it) may start offering h2 without its route changing
H1_RECHECK_SECONDS = 300.0


class MultiplexPool:
    """Requests are opened as streams on the first connection with room; when none has,
    they wait for a new one (one connect per `_EXPECTED_STREAMS` waiting). A tenant whose
    API server does not choose ``h2`` is remembered for `h1_recheck` seconds: `forward` then
    returns False and the caller uses HTTP/1.1. A connection without streams closes after
    `idle_timeout`."""

    def __init__(
        self,
        upstream: Upstream,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_streams: int,
        on_failure: Callable[[Flow, Failure], None],
        fallback: Callable[[Flow], None],
        head_limits: HeadLimits | None = None,
        health: TenantHealth | None = None,
        ping_after: float = 30.0,
        ping_timeout: float = 15.0,
        h1_recheck: float = H1_RECHECK_SECONDS,
    ) -> None:
        self.upstream = upstream
        self.ping_after = ping_after  # the health check of each connection (`MultiplexConnection`)
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self.on_failure = on_failure
        self.fallback = fallback
        self.head_limits = head_limits or HeadLimits()
        self.health = health or TenantHealth()
        self.connections: list[MultiplexConnection] = []
        self.waiting: list[tuple[Flow, float]] = []
        self.connecting = 0
        self.h1_recheck = h1_recheck
        self.h1_until = 0.0  # `time.monotonic()` before which the tenant is taken to lack h2
        self.closed = False
        self._tasks: set[asyncio.Task] = set()  # connects under way

    def forward(self, flow: Flow, *, timeout: float) -> bool:
        """Open `flow` as a stream now or once a connection has room; False when this
        tenant does not speak HTTP/2."""
        if self.closed or self.upstream.ssl_multiplex is None:
            return False
        if self.h1_until and time.monotonic() < self.h1_until:
            return False
        for conn in self.connections:
            if conn.capacity > 0:
                conn.open(flow, timeout=timeout)
                return True
        self.waiting.append((flow, timeout))
        flow.exchange.client_gone_hook = lambda: self._drop_waiting(flow)
        self._grow()
        return True

    def _drop_waiting(self, flow: Flow) -> None:
        self.waiting = [(f, t) for f, t in self.waiting if f is not flow]

    def _grow(self) -> None:
        if len(self.waiting) > self.connecting * _EXPECTED_STREAMS:
            self.connecting += 1
            task = asyncio.get_running_loop().create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        """One new connection; the waiting requests go on it (or fail, or fall back to
        HTTP/1.1 when the tenant does not choose h2)."""
        try:
            failure = await self._open()
        except Exception as exc:  # unforeseen: the waiting requests must not wait forever
            log.exception("tenant %s: HTTP/2 connect failed", self.upstream.name)
            failure = Failure(f"connect failed: {exc!r}")
        finally:
            self.connecting -= 1  # whatever happened, this connect is no longer under way
        if failure is None:
            self._drain()
        elif failure is _NOT_MULTIPLEXED:
            self.h1_until = time.monotonic() + self.h1_recheck
            waiting, self.waiting = self.waiting, []
            for flow, _ in waiting:
                if not flow.exchange.conn.closed:
                    self.fallback(flow)
        else:
            self._fail_waiting(failure)

    async def _open(self) -> Failure | None:
        """Connect, hand-shake and wait for the server's SETTINGS within `connect_timeout`;
        None when the connection is ready (`connection_ready` took it)."""
        loop = asyncio.get_running_loop()
        u = self.upstream
        deadline = loop.time() + self.connect_timeout
        try:
            conn = await dial(
                u, lambda: MultiplexConnection(self), u.ssl_multiplex, self.connect_timeout
            )
            await asyncio.wait_for(conn.ready, max(deadline - loop.time(), 0.001))
        except NotMultiplexed as why:
            log.info("tenant %s: no HTTP/2 (%s); watches use HTTP/1.1", u.name, why)
            return _NOT_MULTIPLEXED
        except TimeoutError:
            return Failure("connect timeout", 504)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            return connect_failed(u.name, exc)
        return None

    def connection_ready(self, conn: MultiplexConnection) -> None:
        """`conn` knows the server's settings: it takes streams from now on."""
        if self.closed:
            conn.close()
            return
        self.connections.append(conn)
        log.info(
            "tenant %s: HTTP/2 connection open (%d of them, up to %d streams on this one)",
            self.upstream.name,
            len(self.connections),
            min(conn.h2.remote_settings.max_concurrent_streams, self.max_streams),
        )
        self._drain()

    def _drain(self) -> None:
        """Open waiting requests on connections with room; connect again for the rest."""
        self._open_waiting()
        if self.waiting:
            self._grow()

    def _open_waiting(self) -> None:
        """Open waiting requests on connections with room."""
        while self.waiting:
            conn = next((c for c in self.connections if c.capacity > 0), None)
            if conn is None:
                break
            room = conn.capacity
            batch, self.waiting = self.waiting[:room], self.waiting[room:]
            for flow, timeout in batch:
                if flow.exchange.conn.closed:
                    continue  # gone while waiting
                conn.open(flow, timeout=timeout)

    def _fail_waiting(self, failure: Failure) -> None:
        """A connect failed: the requests it was to carry get the failure, unless another
        connection has room or a connect is still under way (no new connect is started for
        them: against a tenant that refuses at once, that would be a busy loop of connects
        while they wait)."""
        self._open_waiting()
        if self.connecting:
            return
        waiting, self.waiting = self.waiting, []
        for flow, _ in waiting:
            if not flow.exchange.conn.closed:
                self.on_failure(flow, failure)

    def answered(self) -> None:
        """A response head came: a tenant judged degraded is answering again."""
        if self.health.degraded:
            self.health.answered(self.upstream.name)

    def lost(self, conn: MultiplexConnection) -> None:
        """`conn` takes no new streams (closed, broken or going away)."""
        if conn in self.connections:
            self.connections.remove(conn)
        if self.waiting and not self.closed:
            self._grow()

    def streams(self) -> int:
        """Open streams on every connection."""
        return sum(len(c.streams) for c in self.connections)

    def sweep(self) -> None:
        """Close connections without streams for longer than `idle_timeout`."""
        cutoff = time.monotonic() - self.idle_timeout
        for conn in list(self.connections):
            if not conn.streams and conn.idle_since < cutoff:
                conn.close()

    def close(self) -> None:
        """No new streams; each connection closes once its streams ended (a watch under
        way runs on, as on an HTTP/1.1 connection)."""
        self.closed = True
        for conn in list(self.connections):
            conn.retire()
        self.connections.clear()
