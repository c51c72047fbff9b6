"""The audit log: one JSON line per request, written without blocking the event loop much."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.server.exchange import Exchange

FLUSH_INTERVAL = 0.2
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class AuditLog:
    """Buffers lines; a line is on disk at most `FLUSH_INTERVAL` seconds after its request
    ended (a timer flushes a dirty buffer), and everything is flushed at close."""

    def __init__(self, destination: str) -> None:
        self._own = destination not in ("-", "")
        self._out: IO[str] = (
            open(destination, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            if self._own else sys.stdout
        )
        self._flush_pending: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        """UTC time to the second, formatted once per second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return self._stamp

    def write(self, exchange: Exchange) -> None:
        ident = exchange.identity
        grant = exchange.grant
        path = exchange.upstream_target or exchange.target
        event = {
            "time": self._timestamp(),
            "request_id": exchange.request_id.decode(),
            "source": exchange.conn.peer,
            "tenant": exchange.tenant,
            "user": ident.username if ident else None,
            "uid": ident.uid if ident else None,
            "issuer": ident.issuer if ident else None,
            "groups": list(grant.groups) if grant else [],
            "roles": list(grant.roles) if grant else [],
            "decision": exchange.decision or "none",
            "reason": exchange.reason or None,
            "method": exchange.method.decode("latin-1"),
            "path": path.decode("latin-1")[:2048],
            "status": exchange.status,
            "bytes": exchange.bytes_out,
            "duration_ms": round((time.monotonic() - exchange.started) * 1000, 3),
        }
        if grant and grant.reasons:
            event["granted_by"] = list(grant.reasons)
        self._out.write(_ENCODER.encode(event) + "\n")
        if self._flush_pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._out.flush()
                return
            self._flush_pending = loop.call_later(FLUSH_INTERVAL, self._flush)

    def _flush(self) -> None:
        self._flush_pending = None
        self._out.flush()

    def close(self) -> None:
        if self._flush_pending is not None:
            self._flush_pending.cancel()
            self._flush_pending = None
        self._out.flush()
        if self._own:
            self._out.close()
