"""Record a finished exchange: audit line + metrics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.metrics import Metrics
from gateway.record.audit import AuditLog

if TYPE_CHECKING:
    from gateway.http.exchange import Exchange


class Recorder:
    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self.audit = audit
        self.metrics = metrics

    def stream_opened(self, exchange: Exchange) -> None:
        self.metrics.open_streams.labels("tunnel" if exchange.upgrade else "stream").inc()

    def record(self, exchange: Exchange) -> None:
        tenant = exchange.tenant or ""
        status = exchange.status or 499  # 499: the client left before any response
        exchange.status = status
        elapsed = time.monotonic() - exchange.started
        if exchange.streaming and exchange.decision == "allow":
            self.metrics.open_streams.labels("tunnel" if exchange.upgrade else "stream").dec()
            self.metrics.tally.request(tenant, status, None)
        else:
            self.metrics.tally.request(tenant, status, elapsed)
        self.audit.write(exchange, elapsed)
