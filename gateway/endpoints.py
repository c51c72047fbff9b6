"""The gateway's own endpoints, for requests that address no tenant: health, readiness and
the mounted ASGI apps (portal, admin API); and the metrics listener's (`listen.metrics_port`),
which alone serves `/metrics`: the metrics name every tenant, so they are not for anyone
who can reach the gateway."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.http.asgi import AsgiBridge
from gateway.http.exchange import Exchange
from gateway.metrics import Metrics


@dataclass
class Readiness:
    """What `/readyz` reports: ready once the config is loaded and every issuer has keys,
    not ready while draining."""

    config_loaded: bool = False
    draining: bool = False


Check = Callable[[], "str | None"]  # why not ready, or None


class OwnEndpoints:
    """`/healthz` and `/livez` (the process is up), `/readyz`, then the mounts.

    `/readyz?verbose` answers like kube-apiserver's: one `[+]name ok` or `[-]name failed:
    why` line per check, then, on the metrics listener only, the `notes` (state worth
    knowing that does not make the gateway unready, like a tenant whose API server rejects
    the gateway's credential): they name tenants and policy files, and the main listener
    answers anyone, without a token."""

    def __init__(
        self, metrics: Metrics, keys_loaded: Callable[[], bool], apps: AsgiBridge | None = None
    ) -> None:
        self.metrics = metrics
        self.keys_loaded = keys_loaded
        self.apps = apps or AsgiBridge()
        self.readiness = Readiness()
        self.checks: list[tuple[str, Check]] = []  # beyond the built-in ones
        self.notes: list[Callable[[], list[str]]] = []

    def handle(self, exchange: Exchange) -> None:
        if not self.health(exchange) and not self.apps.handle(exchange):
            exchange.fail(404, "not found: address a tenant by hostname or by path prefix")

    def health(self, exchange: Exchange, *, notes: bool = False) -> bool:
        """Answer a health or readiness probe (`notes`: with the notes); False for any
        other path."""
        path = exchange.target.partition(b"?")[0]
        if path in (b"/healthz", b"/livez"):
            exchange.respond(200, b"ok", content_type=b"text/plain")
        elif path == b"/readyz":
            if b"verbose" in exchange.target.partition(b"?")[2]:
                self._verbose_readiness(exchange, notes=notes)
                return True
            why = self.not_ready()
            if why is None:
                exchange.respond(200, b"ok", content_type=b"text/plain")
            else:
                exchange.respond(503, b"not ready: " + why.encode(), content_type=b"text/plain")
        else:
            return False
        return True

    def _checks(self) -> list[tuple[str, Check]]:
        r = self.readiness
        return [
            ("shutdown", lambda: "draining" if r.draining else None),
            ("config", lambda: None if r.config_loaded else "configuration not loaded"),
            ("signing-keys", lambda: None if self.keys_loaded() else "signing keys not loaded"),
            *self.checks,
        ]

    def not_ready(self) -> str | None:
        """Why the gateway should not get traffic now, or None."""
        for _, check in self._checks():
            why = check()
            if why is not None:
                return why
        return None

    def _verbose_readiness(self, exchange: Exchange, *, notes: bool) -> None:
        lines, ready = [], True
        for name, check in self._checks():
            why = check()
            ready = ready and why is None
            lines.append(f"[+]{name} ok" if why is None else f"[-]{name} failed: {why}")
        for more in self.notes if notes else ():
            lines.extend(f"note: {line}" for line in more())
        lines.append(f"readyz check {'passed' if ready else 'failed'}")
        exchange.respond(
            200 if ready else 503,
            "\n".join(lines).encode() + b"\n",
            content_type=b"text/plain; charset=utf-8",
        )


class MetricsEndpoints:
    """The metrics listener's dispatcher: `/metrics` and the health probes, nothing else."""

    def __init__(self, own: OwnEndpoints) -> None:
        self.own = own

    def dispatch(self, exchange: Exchange) -> None:
        if exchange.target.partition(b"?")[0] == b"/metrics":
            exchange.respond(
                200,
                generate_latest(self.own.metrics.registry),
                content_type=CONTENT_TYPE_LATEST.encode(),
            )
        elif not self.own.health(exchange, notes=True):
            exchange.fail(
                404, "not found: this listener serves /metrics, /healthz, /livez and /readyz"
            )

    def done(self, exchange: Exchange) -> None:
        """Nothing is recorded about scrapes and probes."""
