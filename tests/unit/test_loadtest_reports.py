"""Smoke runs of the load harness: the bench and one locust scenario, seconds-long, against a
local stack. They assert that nothing failed, not how fast anything was."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import run as locust_run
from loadtests.bench.__main__ import missing_tools

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_summary_counts_failures(tmp_path: Path) -> None:
    """The summary reports locust's failures (so the smoke test above can fail)."""
    stats = tmp_path / "x_stats.csv"
    header = (
        "Type,Name,Request Count,Failure Count,Median Response Time,"
        "Average Response Time,Min Response Time,Max Response Time,"
        "Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,"
        "99%,99.9%,99.99%,100%"
    )
    stats.write_text(
        header + "\nGET,denied,10,3,1,1,1,5,10,2.0,0.5,1,1,1,1,2,3,4,5,5,5,5\n"
        ",Aggregated,10,3,1,1,1,5,10,2.0,0.5,1,1,1,1,2,3,4,5,5,5,5\n"
    )
    failures, rows = locust_run.summarize(stats, tmp_path, "t")
    assert failures == 3
    assert rows[0]["p99_ms"] == "5"
    assert "| GET | denied | 10 | 3 |" in (tmp_path / "summary.md").read_text()


def test_tools_are_reported_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtests.bench import stack, wrk

    monkeypatch.setattr(wrk, "wrk_binary", lambda: None)
    assert (
        missing_tools() == "wrk is not installed (apt-get install wrk)"
        or stack.nginx_binary() is None
    )
    monkeypatch.setattr(stack, "nginx_binary", lambda: None)
    assert missing_tools() == "nginx is not installed (apt-get install nginx)"


def test_report_compares_each_row_with_its_own_hops() -> None:
    """A TLS row's ratios are against nginx and direct access over the same hops."""
    from loadtests.bench import report
    from loadtests.bench.throughput import Summary

    def row(name: str, rps: float, p99: float, cpu: float, **refs: str) -> Summary:
        return Summary(name, rps, 1.0, p99, cpu, cpu / 2, 100, 0, 0, [], **refs)

    rmax = {
        s.name: s
        for s in (
            row("direct", 100, 1.0, 5.0),
            row("nginx", 50, 2.0, 10.0),
            row("vgate-cached", 20, 3.0, 40.0),
            row("direct-tls", 80, 1.5, 8.0),
            row("nginx-tls", 40, 2.5, 20.0, direct="direct-tls"),
            row("nginx-tls-logged", 38, 2.6, 25.0, direct="direct-tls"),
            row("vgate-tls", 10, 4.5, 80.0, direct="direct-tls", nginx="nginx-tls"),
        )
    }
    lines = report._max_table(rmax)
    tls = next(x for x in lines if x.startswith("| vgate-tls |")).split(" | ")
    assert tls[2] == "0.25"  # req/s: 10 against nginx-tls's 40, not plain nginx's 50
    assert tls[8] == "+3.00"  # added p99 over direct-tls (4.5 - 1.5)
    assert tls[12] == "0.25"  # per core: 1e6/80 against 1e6/20
    assert any(x.startswith("TLS rows") for x in lines)
    summary = "\n".join(report.closing({"max": rmax}))
    assert "With TLS on both hops: vgate 80.0 µs" in summary and "0.25x nginx per core" in summary
    assert "nginx 25.0 µs of CPU per request (user 12.5): vgate 0.31x nginx per core" in summary


def test_kube_table_subtracts_the_idle_api_server() -> None:
    """The API server's CPU per request is its CPU over the run less its idle burn, and a
    row is compared with direct access over the same path."""
    from loadtests.bench import kube, wrk
    from loadtests.bench.throughput import Sample, Summary

    def row(name: str, requests: int, api_s: float, proxy_us: float = 0.0) -> Summary:
        result = wrk.WrkResult(requests, 10.0, 0, 0, 1, 1, 1, 1, 1, 0)
        return Summary(
            name,
            requests / 10,
            1.0,
            1.0,
            proxy_us,
            0.0,
            requests,
            0,
            0,
            [Sample(result, 0.0, "0", 0.0, api_s)],
            direct="direct-get",
        )

    # idle 5% of a core over 10 s = 0.5 s to subtract from each row's 10 s
    result = {
        "rows": {
            s.name: s
            for s in (
                row("direct-get", 1000, 1.5),
                row("vgate-get", 1000, 1.7, proxy_us=150.0),
                row("imp-user", 1000, 1.6),
            )
        },
        "api_idle": 0.05,
        "connections": 10,
    }
    assert kube.api_us(result["rows"]["direct-get"], 0.05) == pytest.approx(1000.0)
    lines = kube.table(result)
    vgate = next(x for x in lines if x.startswith("| vgate-get |")).split(" | ")
    assert vgate[5:8] == ["1200.0", "0.12", "1.20"]  # API µs, proxy ÷ API, API ÷ direct
    assert "| imp-user | 1 x `Impersonate-User` | 1100.0 | +100.0 | +100.0 |" in lines
    # the WATCH relay: one line per path, events summed and costs as medians over rounds
    relay = {"watches": 100, "event_p50_ms": 1.0, "event_p99_ms": 2.0, "errors": 0, "api_us": 150.0}
    result["watch"] = [
        {**relay, "path": "vgate", "expected": 800, "received": 800, "proxy_us": us}
        for us in (40.0, 60.0, 50.0)
    ]
    assert "| vgate | 100 | 2,400 / 2,400 | 1.00 | 2.00 | 50.0 | 150.0 | 0 |" in kube.table(result)


def test_tenants_table_and_ratios() -> None:
    """The tenants table shows each count against the smallest one."""
    from loadtests.bench import tenants

    rows = [
        {
            "tenants": n,
            "start_s": 1.0,
            "rss": rss,
            "cpu_us": cpu,
            "user_us": cpu / 2,
            "rps": 100.0,
            "errors": 0,
            "new_tenant_s": 1.5,
            "withdrawn_s": 1.2,
            "restored_s": 1.1,
            "cpu_x_smallest": cpu / 40.0,
            "kb_per_tenant": None if n == 10 else (rss - 100 * 2**20) / (n - 10) / 1024,
        }
        for n, rss, cpu in ((10, 100 * 2**20, 40.0), (1010, 110 * 2**20, 42.0))
    ]
    text = "\n".join(tenants.table({"rows": rows}))
    assert "| 10 | 1.0 | 100 | — | 100 | 40.0 | 20.0 | 1.00 | 1.50 | 1.20 | 1.10 | 0 |" in text
    assert "| 1,010 | 1.0 | 110 | 10.2 | 100 | 42.0 | 21.0 | 1.05 |" in text


def test_lifecycle_tenants_table() -> None:
    """The lifecycle tenants table shows each count against the smallest one and the idle
    CPU under store churn as a share of a core."""
    from loadtests.bench import lifecycle_tenants

    rows = [
        {
            "tenants": n,
            "start_s": 2.0,
            "rss": rss,
            "cpu_us": cpu,
            "user_us": cpu / 2,
            "rps": 100.0,
            "errors": 0,
            "new_tenant_s": 0.5,
            "paused_s": 0.6,
            "churn_cpu_s": churn,
            "cpu_x_smallest": cpu / 40.0,
            "kb_per_tenant": None if n == 10 else (rss - 100 * 2**20) / (n - 10) / 1024,
        }
        for n, rss, cpu, churn in ((10, 100 * 2**20, 40.0, 0.05), (10010, 150 * 2**20, 44.0, 0.3))
    ]
    text = "\n".join(lifecycle_tenants.table({"rows": rows}))
    assert "| 10 | 2.0 | 100 | — | 100 | 40.0 | 1.00 | 0.50 | 0.60 | 0.5 | 0 |" in text
    assert "| 10,010 | 2.0 | 150 | 5.1 | 100 | 44.0 | 1.10 | 0.50 | 0.60 | 3.0 | 0 |" in text


def test_watch_scale_counts_losses_as_errors() -> None:
    """A row whose clients received fewer events than the upstreams wrote fails the run, and
    the table shows the loss and the memory ratio to nginx."""
    from loadtests.bench import watch_scale

    short = {"rps": 1000.0, "p50_ms": 0.2, "p99_ms": 1.0, "errors": 0}

    def row(target: str, kb: float | None, received: int) -> dict:
        return {
            "target": target,
            "n": 10,
            "workers": 4,
            "client_tls": target == "direct",
            "open": 10,
            "open_s": 1.0,
            "pss_idle": 1 << 20,
            "pss_open": (1 << 20) + int((kb or 0) * 1024 * 10),
            "rss_idle": 1 << 20,
            "rss_open": (1 << 20) + int((kb or 0) * 1024 * 10),
            "sent": 100,
            "received": received,
            "gaps": 0,
            "silent": 0,
            "errors": 0,
            "first_error": "",
            "event_p50_ms": 0.1,
            "event_p99_ms": 1.0,
            "cpu_share": None if kb is None else 0.1,
            "fds": [],
            "upstream_conns": {"direct": None, "nginx": 10, "vgate": 4}[target],
            "idle": short,
            "spread": short,
            "kb_per_watch": kb,
        }

    result = {
        "n": 10,
        "workers": 4,
        "groups": 1,
        "fd_hard": 20000,
        "capacity": 39600,
        "h2_streams": 100,
        "event_period_s": 5.0,
        "bookmark_period_s": 15.0,
        "short_rate": 1000,
        "short_seconds": 6.0,
        "rows": [row("direct", None, 100), row("nginx", 40.0, 100), row("vgate", 30.0, 100)],
    }
    assert watch_scale.errors(result) == 0
    text = "\n".join(watch_scale.table(result))
    assert "| 30.00 | 0.75 |" in text  # vgate's KB per watch and its ratio to nginx
    # the proxies' upstream connections (multiplexed: 2.5 watches each), none for direct
    assert "| — | 4 (2.5 watches each) |" in text and "| — | 10 (1.0 watches each) |" in text
    assert "ALPN h2 (at most 100 streams per connection)" in text
    direct = next(line for line in text.splitlines() if line.startswith("| direct | TLS |"))
    assert direct.endswith("| 0 | — | — |")  # errors, fds, upstream connections
    result["rows"][2]["received"] = 97
    assert watch_scale.errors(result) == 3
    assert "| 100 | 3 | 0 |" in "\n".join(watch_scale.table(result))


def test_the_logged_nginx_writes_its_access_line_in_the_server_block(tmp_path: Path) -> None:
    """`access_log off` at the http level cancels an `access_log` at the same level: the
    logged proxy's must sit in its server block, or the row silently logs nothing."""
    from loadtests.bench import stack

    proxy = stack.nginx_proxy(tmp_path, 1234, None, name="logged", access_log=True)
    conf = proxy.conf.read_text()
    http_level, server = conf.split("server {", 1)
    assert "access_log off;" in http_level and "log_format vgate_like" in http_level
    assert f"access_log {tmp_path}/logged-access.log vgate_like" in server
    plain = stack.nginx_proxy(tmp_path, 1234, None, name="plain").conf.read_text()
    assert "vgate_like" not in plain
