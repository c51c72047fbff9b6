"""Smoke runs of the load harness: the bench and one locust scenario, seconds-long, against a
local stack. They assert that nothing failed, not how fast anything was."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import run as locust_run
from loadtests.bench.__main__ import missing_tools
from tests.support.tiers import tool_missing

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def bench_smoke(tmp_path: Path, *args: str, timeout: float) -> str:
    """`python -m loadtests.bench --smoke ARGS`, which must succeed: its Markdown report."""
    why = missing_tools()
    if why:
        tool_missing(f"the bench smoke needs nginx and wrk: {why}")
    report = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--smoke", *args, "--out", str(report)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return report.read_text()


def test_bench_smoke(tmp_path: Path) -> None:
    text = bench_smoke(tmp_path, "--json", str(tmp_path / "bench.json"), timeout=420)
    assert "| RS256 |" in text and "| ES256 |" in text  # the token mode
    assert "| 100 |" in text.split("#### Tenants at scale")[1]  # 10 and 100 tenants
    assert "| 100 |" in text.split("#### Lifecycle tenants at scale")[1]  # half paused
    from loadtests.bench import kube

    if kube.unavailable() is None:  # the real API server rows, every path and the relay
        for row in (
            "| direct-admin-get |",
            "| direct-get |",
            "| nginx-get |",
            "| vgate-get |",
            "| direct-list |",
            "| nginx-list |",
            "| vgate-list |",
            "| imp-user |",
            "| imp-+20-extras |",
            "| direct | 100 |",
            "| vgate | 100 |",
        ):
            assert row in text, f"{row!r} missing from the report:\n{text}"
    else:
        assert "A real kube-apiserver\n\nNot measured: needs" in text
    for row in (
        "| direct |",
        "| nginx |",
        "| vgate-cached |",
        "| vgate-fresh-jwt |",
        "| direct-tls |",
        "| nginx-tls-up |",
        "| vgate-tls-up |",
        "| nginx-tls |",
        "| nginx-tls-logged |",
        "| vgate-tls |",
        "| vgate-ad-groups |",
        "| vgate | 200/200 | spread |",
        "| nginx | 200/200 | spread |",
        "| vgate | 200/200 | burst |",
    ):
        assert row in text, f"{row!r} missing from the report:\n{text}"
    assert "Added p99 at half of vgate-cached's max rate (plain HTTP)" in text
    assert "Added p99 at half of vgate-tls's max rate (TLS on both hops)" in text
    assert "| bench alone |" in text and "| bench while flood floods |" in text
    from tests.support.directory.samba import unavailable

    if unavailable() is None:  # root with samba installed: the AD row is measured
        assert "| vgate-ad-groups | not measured" not in text, text


def test_locust_smoke(tmp_path: Path) -> None:
    why = locust_run.missing_tools()
    if why:
        tool_missing(f"locust smoke: {why}")
    out = tmp_path / "locust"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.run",
            "--scenario",
            "mixed",
            "--users",
            "8",
            "--time",
            "10s",
            "--out",
            str(out),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with (out / "summary.csv").open(newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["Aggregated"]["failures"] == "0"
    # every scenario in the mix ran: kubectl users, controllers, the refresh storm, the
    # denied user (whose 403s count as successes only because they are expected)
    for name in (
        "list pods limit=500",
        "controller watch configmaps",
        "list pods with a fresh token",
        "IdP token refresh",
        "denied list pods",
    ):
        assert int(rows[name]["requests"]) > 0, f"{name} never ran: {rows.keys()}"
    assert "| Aggregated |" in (out / "summary.md").read_text()


def test_exec_relay_bench_smoke() -> None:
    """The exec relay row: a tunnel, a recording, a bridge, both — every byte arrives and
    the recorded rows write a cast of it."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench.exec_relay", "--mib", "2", "--sessions", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and "relayed" not in line
    }
    assert set(rows) == {"tunnel", "tunnel + recording", "bridged", "bridged + recording"}
    for name, cells in rows.items():
        assert float(cells[0]) == 2, (name, cells)  # every MiB arrived
        assert (float(cells[4]) >= 2) == name.endswith("recording"), (name, cells)


def test_tls_configs_are_valid_nginx(tmp_path: Path) -> None:
    """The bench's TLS upstream and TLS proxy configs pass `nginx -t` and say what the
    report claims: TLS listeners with the bench certificate, `proxy_ssl` with the
    certificate checked against the bench CA."""
    from loadtests.bench import stack

    if stack.nginx_binary() is None:
        tool_missing("needs nginx")
    pki = stack.certificates(tmp_path)
    up = stack.static_upstream(tmp_path, None, None, tls=pki)
    proxy = stack.nginx_proxy(
        tmp_path, up.tls_port, None, name="proxy-tls", upstream_ca=pki.ca_file, tls=pki
    )
    logged = stack.nginx_proxy(
        tmp_path,
        up.tls_port,
        None,
        name="proxy-tls-logged",
        upstream_ca=pki.ca_file,
        tls=pki,
        access_log=True,
    )
    for server in (up, proxy, logged):
        text = server.conf.read_text()
        assert f"listen 127.0.0.1:{server.tls_port} ssl" in text and "@" not in text
        assert f"ssl_certificate {pki.cert_file};" in text
        check = subprocess.run(
            [stack.nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(server.conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
    text = proxy.conf.read_text()
    assert "proxy_pass https://api;" in text
    assert f"proxy_ssl_trusted_certificate {pki.ca_file}; proxy_ssl_verify on;" in text
    plain = stack.nginx_proxy(tmp_path, up.port, None)
    assert plain.tls_port == 0 and "proxy_pass http://api;" in plain.conf.read_text()


def test_token_mode_measures_both_algorithms(tmp_path: Path) -> None:
    """`--mode tokens` verifies real RS256 and ES256 tokens through a started
    Authenticator (keys fetched from the bench's nginx) and reports each way."""
    from loadtests.bench import stack, tokens

    if stack.nginx_binary() is None:
        tool_missing("needs nginx")
    result = tokens.run(tmp_path, count=20, rounds=1, log=lambda _msg: None)
    assert set(result["rows"]) == {"RS256", "ES256"}
    for row in result["rows"].values():
        assert row["authenticate"] > 0 and row["jwt_decode"] > 0 and row["signature"] > 0
    text = "\n".join(tokens.table(result))
    assert "| RS256 |" in text and "| ES256 |" in text


def test_watch_scale_smoke(tmp_path: Path) -> None:
    """Watches at scale, small: direct, nginx and vgate with 2 workers each carry every watch
    over TLS upstreams on two loopback addresses from two client addresses, and every event
    the upstreams wrote arrives (the run fails on any error, loss or gap)."""
    text = bench_smoke(
        tmp_path, "--mode", "watches", "--watches", "1000", "--watch-workers", "2", timeout=300
    )
    for row in ("| direct | TLS | 1,000/1,000 |", "| nginx | plain | 1,000/1,000 |"):
        assert row in text, f"{row!r} missing from the report:\n{text}"
    assert "| vgate | plain | 1,000/1,000 |" in text, text
