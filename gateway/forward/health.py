"""Which tenants the gateway cannot serve because of itself: the tenant's API server
rejected the gateway's own credential (a 401 to a request vgate impersonated — never the
user's fault). Counted, logged, and shown in `/readyz?verbose` until a later answer from
that tenant is not a 401."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.metrics import Metrics

log = logging.getLogger("vgate.forward")

LOG_EVERY_SECONDS = 30.0  # a failing tenant logs its first failure, then one line this often


@dataclass(slots=True)
class Degraded:
    since: float  # wall time of the first failure in this run of failures
    failures: int
    logged: float  # monotonic time of the last log line


class TenantHealth:
    """Per worker process: the tenants whose credential is being rejected right now."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics
        self.degraded: dict[str, Degraded] = {}

    def credential_rejected(self, tenant: str, request_id: str) -> None:
        if self.metrics is not None:
            self.metrics.upstream_credential_failures.labels(tenant).inc()
        now = time.monotonic()
        state = self.degraded.get(tenant)
        if state is None:
            self.degraded[tenant] = Degraded(time.time(), 1, now)
            log.error(
                "tenant %s: its API server rejected the gateway's own credential (401) "
                "for request %s; requests to this tenant get 502 until the credential "
                "(token_file or client certificate) is renewed",
                tenant,
                request_id,
            )
            return
        state.failures += 1
        if now - state.logged >= LOG_EVERY_SECONDS:
            state.logged = now
            log.error(
                "tenant %s: the gateway's credential is still rejected (%d failures since %s)",
                tenant,
                state.failures,
                _when(state.since),
            )

    def answered(self, tenant: str) -> None:
        """The tenant answered with something other than 401: its credential works."""
        state = self.degraded.pop(tenant, None)
        if state is not None:
            log.info(
                "tenant %s: the gateway's credential is accepted again (after %d "
                "rejected requests)",
                tenant,
                state.failures,
            )

    def notes(self) -> list[str]:
        """One line per degraded tenant, for the verbose readiness answer."""
        return [
            f"tenant {name}: the gateway's credential is rejected by its API server "
            f"(401) since {_when(d.since)}, {d.failures} failed requests"
            for name, d in sorted(self.degraded.items())
        ]


def _when(wall: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))
