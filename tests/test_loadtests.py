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

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_bench_smoke(tmp_path: Path) -> None:
    why = missing_tools()
    if why:
        tool_missing(f"bench smoke needs nginx and wrk: {why}")
    report = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench", "--smoke", "--out", str(report),
         "--json", str(tmp_path / "bench.json")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = report.read_text()
    for row in ("| direct |", "| nginx |", "| vgate-cached |", "| vgate-fresh-jwt |",
                "| vgate-ad-groups |", "| vgate | 200/200 | spread |",
                "| nginx | 200/200 | spread |", "| vgate | 200/200 | burst |"):
        assert row in text, f"{row!r} missing from the report:\n{text}"
    assert "Added p99 at half of vgate's max rate" in text
    assert "| bench alone |" in text and "| bench while flood floods |" in text
    from tests.directory.samba import unavailable

    if unavailable() is None:  # root with samba installed: the AD row is measured
        assert "| vgate-ad-groups | not measured" not in text, text


def test_locust_smoke(tmp_path: Path) -> None:
    why = locust_run.missing_tools()
    if why:
        tool_missing(f"locust smoke: {why}")
    out = tmp_path / "locust"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.run", "--scenario", "mixed", "--users", "8",
         "--time", "10s", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    with (out / "summary.csv").open(newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["Aggregated"]["failures"] == "0"
    # every scenario in the mix ran: kubectl users, controllers, the refresh storm, the
    # denied user (whose 403s count as successes only because they are expected)
    for name in ("list pods limit=500", "controller watch configmaps",
                 "list pods with a fresh token", "IdP token refresh", "denied list pods"):
        assert int(rows[name]["requests"]) > 0, f"{name} never ran: {rows.keys()}"
    assert "| Aggregated |" in (out / "summary.md").read_text()


def test_summary_counts_failures(tmp_path: Path) -> None:
    """The summary reports locust's failures (so the smoke test above can fail)."""
    stats = tmp_path / "x_stats.csv"
    header = ("Type,Name,Request Count,Failure Count,Median Response Time,"
              "Average Response Time,Min Response Time,Max Response Time,"
              "Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,"
              "99%,99.9%,99.99%,100%")
    stats.write_text(header + "\nGET,denied,10,3,1,1,1,5,10,2.0,0.5,1,1,1,1,2,3,4,5,5,5,5\n"
                     ",Aggregated,10,3,1,1,1,5,10,2.0,0.5,1,1,1,1,2,3,4,5,5,5,5\n")
    failures, rows = locust_run.summarize(stats, tmp_path, "t")
    assert failures == 3
    assert rows[0]["p99_ms"] == "5"
    assert "| GET | denied | 10 | 3 |" in (tmp_path / "summary.md").read_text()


def test_tools_are_reported_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from loadtests.bench import stack, wrk

    monkeypatch.setattr(wrk, "wrk_binary", lambda: None)
    assert missing_tools() == "wrk is not installed (apt-get install wrk)" or \
        stack.nginx_binary() is None
    monkeypatch.setattr(stack, "nginx_binary", lambda: None)
    assert missing_tools() == "nginx is not installed (apt-get install nginx)"


def test_exec_relay_bench_smoke() -> None:
    """The exec relay row: a tunnel, a recording, a bridge, both — every byte arrives and
    the recorded rows write a cast of it."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests.bench.exec_relay", "--mib", "2", "--sessions", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in proc.stdout.splitlines()
            if line.startswith("| ") and "relayed" not in line}
    assert set(rows) == {"tunnel", "tunnel + recording", "bridged", "bridged + recording"}
    for name, cells in rows.items():
        assert float(cells[0]) == 2, (name, cells)  # every MiB arrived
        assert (float(cells[4]) >= 2) == name.endswith("recording"), (name, cells)
