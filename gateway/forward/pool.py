"""Keep-alive connections to one tenant's API server."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from gateway.forward.connection import HeadLimits, UpstreamConnection
from gateway.forward.failure import Failure
from gateway.forward.health import TenantHealth
from gateway.registry import Upstream

if TYPE_CHECKING:
    from gateway.flow import Flow


P = TypeVar("P", bound=asyncio.Protocol)

#: (pool, flow, failure): a connection failed before any usable response came
FailureHandler = Callable[["UpstreamPool", "Flow", Failure], None]


#: TCP keepalive on every upstream connection, as client-go's dialer (`KeepAlive: 30s`):
#: a tenant whose node is gone (a half-open connection) is found after idle + count x
#: interval = 30 + 9 x 30 s, and the watches it held break instead of waiting forever
KEEPALIVE_IDLE_SECONDS = 30
KEEPALIVE_INTERVAL_SECONDS = 30
KEEPALIVE_PROBES = 9


async def dial(
    upstream: Upstream,
    protocol: Callable[[], P],
    context: ssl.SSLContext | None,
    within: float,
) -> P:
    """A new connection to `upstream` (TCP connect and TLS handshake with `context` within
    `within` seconds), driven by `protocol()`, with TCP keepalive on (`probe_liveness`)."""
    loop = asyncio.get_running_loop()
    transport, conn = await asyncio.wait_for(
        loop.create_connection(
            protocol,
            upstream.host,
            upstream.port,
            ssl=context,
            server_hostname=upstream.server_hostname,
        ),
        within,
    )
    probe_liveness(transport)
    return conn


def probe_liveness(transport: asyncio.BaseTransport) -> None:
    """Turn TCP keepalive on for `transport`'s socket (`KEEPALIVE_*`)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


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
        return await dial(
            self.upstream, lambda: UpstreamConnection(self), self.upstream.ssl, self.connect_timeout
        )

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
