"""Keep-alive connections to one tenant's API server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.forward.connection import HeadLimits, UpstreamConnection
from gateway.forward.failure import Failure
from gateway.forward.health import TenantHealth
from gateway.registry import Upstream

if TYPE_CHECKING:
    from gateway.flow import Flow


#: (pool, flow, failure): a connection failed before any usable response came
FailureHandler = Callable[["UpstreamPool", "Flow", Failure], None]


class UpstreamPool:
    """Idle connections are reused last-in first-out and closed after `idle_timeout`.

    Busy connections are not tracked here: a watch holds its connection until it ends,
    so the pool's cost per request does not grow with the number of open watches.
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        connect_timeout: float,
        max_idle: int,
        idle_timeout: float,
        on_failure: FailureHandler,
        head_limits: HeadLimits | None = None,
        health: TenantHealth | None = None,
    ) -> None:
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.on_failure = on_failure
        self.head_limits = head_limits or HeadLimits()
        self.health = health or TenantHealth()
        self._idle: list[UpstreamConnection] = []
        self.closed = False

    def take_idle(self) -> UpstreamConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """Open a new connection (TLS handshake included) within `connect_timeout`."""
        loop = asyncio.get_running_loop()
        u = self.upstream
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: UpstreamConnection(self),
                u.host,
                u.port,
                ssl=u.ssl,
                server_hostname=u.server_hostname,
            ),
            self.connect_timeout,
        )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or conn.closed or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)

    def sweep(self) -> None:
        """Close connections idle for longer than `idle_timeout`."""
        cutoff = time.monotonic() - self.idle_timeout
        keep = []
        for conn in self._idle:
            if conn.closed:
                continue
            if conn.idle_since < cutoff:
                conn.close()
            else:
                keep.append(conn)
        self._idle = keep

    def close(self) -> None:
        self.closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
