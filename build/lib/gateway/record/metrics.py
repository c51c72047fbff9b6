"""Prometheus metrics of the gateway (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_CACHED_CHILDREN = 4096
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "vgate_requests_total", "Requests by tenant and HTTP status code",
            ["tenant", "code"], registry=r)
        self.latency = Histogram(
            "vgate_request_duration_seconds",
            "Time to the end of the response (short requests only; streams excluded)",
            ["tenant"], buckets=LATENCY_BUCKETS, registry=r)
        self.auth_failures = Counter(
            "vgate_auth_failures_total", "Authentication failures by reason", ["reason"],
            registry=r)
        self.denials = Counter(
            "vgate_policy_denials_total", "Requests refused by policy", ["tenant"], registry=r)
        self.token_cache = Counter(
            "vgate_token_cache_total", "Verified-token cache lookups", ["result"], registry=r)
        self.open_streams = Gauge(
            "vgate_open_streams", "Watches, log follows and tunnels open now", ["kind"],
            registry=r)
        self.upstream_errors = Counter(
            "vgate_upstream_errors_total", "Upstream failures by tenant", ["tenant"], registry=r)
        self.directory_lookups = Counter(
            "vgate_directory_lookups_total",
            "Directory lookups (round trips for one user) by result", ["result"], registry=r)
        self.directory_latency = Histogram(
            "vgate_directory_lookup_duration_seconds", "Time of one directory lookup",
            buckets=LATENCY_BUCKETS, registry=r)
        self.directory_cache = Counter(
            "vgate_directory_cache_total",
            "Directory group cache: hit, negative_hit, miss, stale (served while the "
            "directory is down), refused (down and nothing young enough)", ["result"],
            registry=r)
        self.directory_errors = Counter(
            "vgate_directory_errors_total", "Directory failures by kind", ["kind"], registry=r)
        # label children used on every request, looked up once (labels() takes a lock)
        self.token_cache_hit = self.token_cache.labels("hit")
        self.token_cache_miss = self.token_cache.labels("miss")
        self._request_children: dict[tuple[str, int], tuple] = {}

    def request_children(self, tenant: str, status: int) -> tuple:
        """(requests counter, latency histogram) children for a tenant and status code."""
        key = (tenant, status)
        children = self._request_children.get(key)
        if children is None:
            if len(self._request_children) >= MAX_CACHED_CHILDREN:
                self._request_children.clear()
            children = (self.requests.labels(tenant, str(status)), self.latency.labels(tenant))
            self._request_children[key] = children
        return children
