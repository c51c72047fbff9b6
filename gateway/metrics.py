"""Prometheus metrics of the gateway (one registry per process)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RequestTally(Collector):
    """The per-request series: requests by (tenant, code), request latency by tenant, token
    cache hits and misses, requests refused by a limit (a flood's every request). Kept as
    plain numbers, since every request updates them: the event loop is the only writer (one
    thread per worker process), so no lock is taken per request, unlike prometheus_client's
    own metric objects. Exposed by `collect` as the usual counter and histogram families."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.latency: dict[str, list] = {}  # tenant -> [bucket counts..., +Inf count, sum]
        self.token_cache_hits = 0
        self.token_cache_misses = 0
        self.limited: dict[tuple[str, str], int] = {}  # (tenant, reason) -> 429s

    def request(self, tenant: str, status: int, elapsed: float | None) -> None:
        """Count one finished request; `elapsed` (seconds) None for streams."""
        key = (tenant, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if elapsed is not None:
            row = self.latency.get(tenant)
            if row is None:
                row = self.latency[tenant] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
            row[bisect_left(LATENCY_BUCKETS, elapsed)] += 1
            row[-1] += elapsed

    def rate_limited(self, tenant: str, reason: str) -> None:
        key = (tenant, reason)
        self.limited[key] = self.limited.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "vgate_requests_total",
            "Requests by tenant and HTTP status code",
            labels=["tenant", "code"],
        )
        for (tenant, status), n in list(self.counts.items()):
            requests.add_metric([tenant, str(status)], n)
        yield requests
        latency = HistogramMetricFamily(
            "vgate_request_duration_seconds",
            "Time to the end of the response (short requests only; streams excluded)",
            labels=["tenant"],
        )
        for tenant, row in list(self.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([tenant], buckets, row[-1])
        yield latency
        cache = CounterMetricFamily(
            "vgate_token_cache_total", "Verified-token cache lookups", labels=["result"]
        )
        cache.add_metric(["hit"], self.token_cache_hits)
        cache.add_metric(["miss"], self.token_cache_misses)
        yield cache
        limited = CounterMetricFamily(
            "vgate_rate_limited_total",
            "Requests refused with 429 by a limit: reason user|tenant|global + _rate|_streams",
            labels=["tenant", "reason"],
        )
        for (tenant, reason), n in list(self.limited.items()):
            limited.add_metric([tenant, reason], n)
        yield limited


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tally = RequestTally()  # requests, request latency, token cache
        r.register(self.tally)
        self.build_info = Gauge(
            "vgate_build_info",
            "1, labelled with the version and whether the request path runs compiled (mypyc) "
            "or interpreted",
            ["version", "request_path"],
            registry=r,
        )
        self.auth_failures = Counter(
            "vgate_auth_failures_total", "Authentication failures by reason", ["reason"], registry=r
        )
        self.denials = Counter(
            "vgate_policy_denials_total", "Requests refused by policy", ["tenant"], registry=r
        )
        self.open_streams = Gauge(
            "vgate_open_streams", "Watches, log follows and tunnels open now", ["kind"], registry=r
        )
        self.http2_connections = Gauge(
            "vgate_upstream_http2_connections",
            "HTTP/2 connections to tenants' API servers (they carry watches and log follows)",
            registry=r,
        )
        self.http2_streams = Gauge(
            "vgate_upstream_http2_streams",
            "Watches and log follows open as streams of those HTTP/2 connections",
            registry=r,
        )
        self.upstream_errors = Counter(
            "vgate_upstream_errors_total", "Upstream failures by tenant", ["tenant"], registry=r
        )
        self.upstream_credential_failures = Counter(
            "vgate_upstream_credential_failures_total",
            "Requests the tenant's API server refused because it rejected the gateway's own "
            "credential (401)",
            ["tenant"],
            registry=r,
        )
        self.directory_lookups = Counter(
            "vgate_directory_lookups_total",
            "Directory lookups (round trips for one user) by result",
            ["result"],
            registry=r,
        )
        self.directory_latency = Histogram(
            "vgate_directory_lookup_duration_seconds",
            "Time of one directory lookup",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.directory_cache = Counter(
            "vgate_directory_cache_total",
            "Directory group cache: hit, negative_hit, miss, stale (served while the "
            "directory is down), refused (down and nothing young enough)",
            ["result"],
            registry=r,
        )
        self.directory_errors = Counter(
            "vgate_directory_errors_total", "Directory failures by kind", ["kind"], registry=r
        )
        self.policy_generation = Gauge(
            "vgate_policy_generation",
            "Policy sets this process has used: 1 at start, +1 per reload that changed something",
            registry=r,
        )
        self.policy_hash = Gauge(
            "vgate_policy_hash_info",
            "The policies and static tenants in use: sha256 (first 16 hex digits) of what they say",
            ["sha256"],
            registry=r,
        )
        self.policy_loaded = Gauge(
            "vgate_policy_loaded_timestamp_seconds",
            "When the policies in use were read",
            registry=r,
        )
        self.config_reloads = Counter(
            "vgate_config_reload_total",
            "Reloads after a file change or SIGHUP: ok, or error (the last good "
            "configuration stays)",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):
            self.config_reloads.labels(result)
        self.rate_limit_bypassed = Counter(
            "vgate_rate_limit_bypassed_total",
            "Requests not limited because the limit table could not count them (full: every "
            "slot of the key's group holds open streams; lock: a lock left held)",
            ["cause"],
            registry=r,
        )
        self.stream_sessions = Counter(
            "vgate_stream_sessions_total",
            "exec/attach/cp/port-forward sessions that switched protocols, by tenant and "
            "how they went through (tunnel, or bridged websocket->spdy / spdy->websocket)",
            ["tenant", "path"],
            registry=r,
        )
        self.session_recordings = Counter(
            "vgate_session_recordings_total",
            "exec/attach recordings by tenant and outcome: recorded; unrecorded (best-effort, "
            "could not be opened); refused (required, could not be opened: 503); stopped "
            "(fell behind or failed mid-session)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.token_reviews = Counter(
            "vgate_token_reviews_total",
            "TokenReviews of tenant-native tokens at their tenant, by result "
            "(authenticated, rejected, error)",
            ["tenant", "result"],
            registry=r,
        )
