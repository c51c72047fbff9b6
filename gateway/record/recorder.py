"""Record a finished exchange: audit line + metrics."""

from __future__ import annotations

import time

from gateway.flow import Flow, Outcome
from gateway.metrics import Metrics
from gateway.record.audit import AuditLog


class Recorder:
    """Step 7: what the gateway counts and writes down about requests."""

    def __init__(self, audit: AuditLog, metrics: Metrics) -> None:
        self.audit = audit
        self.metrics = metrics

    def token_cache_hit(self) -> None:
        self.metrics.tally.token_cache_hits += 1

    def token_cache_miss(self) -> None:
        self.metrics.tally.token_cache_misses += 1

    def auth_failed(self, reason: str) -> None:
        self.metrics.auth_failures.labels(reason).inc()

    def denied(self, tenant: str) -> None:
        self.metrics.denials.labels(tenant).inc()

    def limited(self, tenant: str, reason: str) -> None:
        self.metrics.tally.rate_limited(tenant, reason)

    def stream_opened(self, flow: Flow) -> None:
        self.metrics.open_streams.labels("tunnel" if flow.exchange.upgrade else "stream").inc()

    def record(self, flow: Flow) -> None:
        """The exchange ended: one audit line, the request counted (streams and tunnels
        leave the open-streams gauge)."""
        exchange = flow.exchange
        tenant = flow.tenant or ""
        status = exchange.status or 499  # 499: the client left before any response
        exchange.status = status
        elapsed = time.monotonic() - exchange.started
        if exchange.streaming and flow.outcome is Outcome.ALLOW:
            self.metrics.open_streams.labels("tunnel" if exchange.upgrade else "stream").dec()
            self.metrics.tally.request(tenant, status, None)
            stream = flow.stream
            if stream is not None and status == 101:
                path = f"{stream.request.client}->{stream.attempt}" if stream.bridged else "tunnel"
                self.metrics.stream_sessions.labels(tenant, path).inc()
        else:
            self.metrics.tally.request(tenant, status, elapsed)
        self.audit.write(flow, elapsed)

    def close(self) -> None:
        self.audit.close()
