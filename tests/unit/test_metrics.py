"""The per-request metrics (gateway.metrics.RequestTally) as Prometheus exposes them."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_latency_and_token_cache_series() -> None:
    m = Metrics()
    t = m.tally
    t.request("t1", 200, 0.0004)
    t.request("t1", 200, 0.003)
    t.request("t1", 403, 0.02)
    t.request("t2", 200, 99.0)  # beyond the last bucket
    t.request("t1", 200, None)  # a stream: counted, no latency
    t.token_cache_hits += 5
    t.token_cache_misses += 2
    s = _samples(m)
    assert s[("vgate_requests_total", (("code", "200"), ("tenant", "t1")))] == 3
    assert s[("vgate_requests_total", (("code", "403"), ("tenant", "t1")))] == 1
    assert s[("vgate_requests_total", (("code", "200"), ("tenant", "t2")))] == 1
    bucket = "vgate_request_duration_seconds_bucket"
    assert s[(bucket, (("le", "0.001"), ("tenant", "t1")))] == 1
    assert s[(bucket, (("le", "0.005"), ("tenant", "t1")))] == 2
    assert s[(bucket, (("le", "0.025"), ("tenant", "t1")))] == 3
    assert s[(bucket, (("le", "+Inf"), ("tenant", "t1")))] == 3
    assert s[(bucket, (("le", "60.0"), ("tenant", "t2")))] == 0
    assert s[(bucket, (("le", "+Inf"), ("tenant", "t2")))] == 1
    assert s[("vgate_request_duration_seconds_count", (("tenant", "t1"),))] == 3
    assert abs(s[("vgate_request_duration_seconds_sum", (("tenant", "t1"),))] - 0.0234) < 1e-9
    assert s[("vgate_token_cache_total", (("result", "hit"),))] == 5
    assert s[("vgate_token_cache_total", (("result", "miss"),))] == 2


def test_a_bound_itself_falls_in_its_bucket() -> None:
    m = Metrics()
    m.tally.request("t", 200, 0.001)  # le="0.001" includes 0.001
    assert (
        _samples(m)[("vgate_request_duration_seconds_bucket", (("le", "0.001"), ("tenant", "t")))]
        == 1
    )
