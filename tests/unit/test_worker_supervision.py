"""`vgate serve` with `workers: 2` as a real process tree: a worker killed with SIGKILL is
started again (logged, counted in every worker's /metrics), /readyz says so while capacity
is down, a stopped worker shows in readiness, SIGHUP reloads every worker and leaves the
master alive, and SIGTERM drains every worker (exit status 0, even after a restart)."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.workers import STALE_SECONDS
from tests.support.craft import CraftingIssuer
from tests.support.kube import free_port
from tests.support.scripted import ScriptedUpstream
from tests.support.served import ServedGateway
from tests.support.workers import one_connection_per_worker, worker_pids

pytestmark = [pytest.mark.slow]

VIEW = {"tenant": "*", "roles": {"view": {"groups": ["developers"]}}}
NOBODY = {"tenant": "*", "roles": {"view": {"groups": ["nobody"]}}}


@pytest.fixture
def gateway(
    tmp_path: Path, issuer: CraftingIssuer, upstream: ScriptedUpstream, request
) -> Iterator[tuple[ServedGateway, Path, dict[str, str]]]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(yaml.safe_dump(VIEW))
    (tmp_path / "token").write_text("upstream-secret\n")
    config = {
        "listen": {"host": "127.0.0.1", "port": 0, "metrics_port": free_port()},
        "workers": 2,
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "policies": str(tmp_path / "policies"),
        "audit": {"file": str(tmp_path / "audit.log")},
        "tenants": [
            {
                "name": "t1",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(tmp_path / "token"),
            }
        ],
    }
    if hasattr(request, "param"):
        config["reload"] = {"poll_seconds": request.param}
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(config))
    upstream.handler = upstream.default
    headers = {"Authorization": f"Bearer {issuer.sign(issuer.claims())}"}
    with ServedGateway(tmp_path / "vgate.yaml", workers=2) as served:
        yield served, tmp_path, headers


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={**(headers or {}), "Connection": "close"})
    r = conn.getresponse()
    return r.status, r.read().decode()


def log_has(served: ServedGateway, text: str) -> bool:
    return any(text in line for line in served.lines)


def test_a_killed_worker_is_started_again_and_readiness_shows_the_gap(gateway) -> None:
    served, base, headers = gateway
    master = served.proc.pid
    before = worker_pids(master)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    gap = None
    while time.monotonic() - killed < 10:
        status, body = get(served.port, "/readyz?verbose")
        if status == 503:
            gap = body
            break
        time.sleep(0.02)
    assert gap is not None, "readiness never showed the dead worker"
    assert "[-]workers failed: 1 of 2 worker processes serving" in gap
    assert "restarting (killed by signal SIGKILL)" in gap
    while len(worker_pids(master)) < 2 or victim in worker_pids(master):
        assert time.monotonic() - killed < 10, "the worker was not started again"
        time.sleep(0.05)
    after = worker_pids(master)
    new = (after - before).pop()
    assert log_has(served, f"(pid {victim}) killed by signal SIGKILL")
    while not log_has(served, f"(pid {new})"):  # its "listening" line
        assert time.monotonic() - killed < 15
        time.sleep(0.05)
    metrics_port = yaml.safe_load((base / "vgate.yaml").read_text())["listen"]["metrics_port"]
    for pid, conn in one_connection_per_worker(metrics_port, master).items():
        conn.request("GET", "/metrics")
        metrics = conn.getresponse().read().decode()
        assert "vgate_worker_restarts_total 1.0" in metrics, pid
        assert "vgate_workers_running 2.0" in metrics
    for conn in one_connection_per_worker(served.port, master).values():
        conn.request("GET", "/readyz")
        assert conn.getresponse().read() == b"ok"
        conn.request("GET", "/clusters/t1/api", headers=headers)
        assert conn.getresponse().status == 200
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0  # was 247: the killed worker's status


def test_a_stopped_worker_makes_the_gateway_unready_until_it_runs_again(gateway) -> None:
    served, _, _ = gateway
    victim = min(worker_pids(served.proc.pid))
    os.kill(victim, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        while True:
            status, body = get(served.port, "/readyz?verbose")  # only the other one answers
            if status == 503:
                break
            assert time.monotonic() - stopped < STALE_SECONDS + 5, body
            time.sleep(0.2)
        assert f"(pid {victim}) not responding for" in body
    finally:
        os.kill(victim, signal.SIGCONT)
    time.sleep(1.5)
    assert get(served.port, "/readyz")[0] == 200


@pytest.mark.parametrize("gateway", [0], indirect=True)  # reload.poll_seconds: SIGHUP only
def test_sighup_reloads_every_worker_and_the_master_stays(gateway) -> None:
    served, tmp, headers = gateway
    (tmp / "policies" / "all.yaml").write_text(yaml.safe_dump(NOBODY))
    time.sleep(1.5)
    assert get(served.port, "/clusters/t1/api", headers)[0] == 200  # not polled: unchanged
    served.proc.send_signal(signal.SIGHUP)
    sent = time.monotonic()
    conns = one_connection_per_worker(served.port, served.proc.pid)
    pending = set(conns)
    while pending:
        for pid in list(pending):
            conns[pid].request("GET", "/clusters/t1/api", headers=headers)
            r = conns[pid].getresponse()
            r.read()
            if r.status == 403:
                pending.discard(pid)
        assert time.monotonic() - sent < 2, f"workers {pending} did not reload on SIGHUP"
    assert served.proc.poll() is None
    assert sum("configuration reloaded: generation 2" in line for line in served.lines) == 2
    assert log_has(served, "SIGHUP: every worker reads the configuration again")


@pytest.mark.parametrize("gateway", [0], indirect=True)  # reload.poll_seconds: SIGHUP only
def test_sighup_with_a_broken_policy_keeps_the_last_good_one_in_every_worker(gateway) -> None:
    served, tmp, headers = gateway
    (tmp / "policies" / "all.yaml").write_text("tenant: '*'\nroles: [\n")  # a bad edit
    served.proc.send_signal(signal.SIGHUP)
    sent = time.monotonic()
    while sum("configuration not reloaded" in line for line in served.lines) < 2:
        assert time.monotonic() - sent < 5, "".join(served.lines[-10:])
        time.sleep(0.05)
    refused = [line for line in served.lines if "configuration not reloaded" in line]
    assert all("all.yaml:" in line for line in refused), refused  # file and line named
    for pid, conn in one_connection_per_worker(served.port, served.proc.pid).items():
        conn.request("GET", "/clusters/t1/api", headers=headers)
        r = conn.getresponse()
        assert r.status == 200, (pid, r.read())  # the last good policy still decides
        r.read()
    assert served.proc.poll() is None
    metrics_port = yaml.safe_load((tmp / "vgate.yaml").read_text())["listen"]["metrics_port"]
    status, text = get(metrics_port, "/metrics")
    assert 'vgate_config_reload_total{result="error"} 1.0' in text
    status, text = get(metrics_port, "/readyz?verbose")
    assert status == 200 and "all.yaml" in text  # ready, and the refused change is shown
    (tmp / "policies" / "all.yaml").write_text(yaml.safe_dump(NOBODY))  # fixed: applies
    served.proc.send_signal(signal.SIGHUP)
    sent = time.monotonic()
    while get(served.port, "/clusters/t1/api", headers)[0] != 403:
        assert time.monotonic() - sent < 2
        time.sleep(0.05)


def test_sigterm_drains_every_worker(gateway, upstream: ScriptedUpstream) -> None:
    served, _, headers = gateway
    release = threading.Event()

    async def slow(head, reader, writer) -> bool:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 10)
        body = b'{"kind":"List","items":[]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()
        return True

    upstream.handler = slow
    conns = one_connection_per_worker(served.port, served.proc.pid)
    for conn in conns.values():  # one slow request in flight in each worker
        conn.request("GET", "/clusters/t1/api/v1/pods", headers=headers)
    time.sleep(0.3)
    served.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    release.set()
    for conn in conns.values():
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b'{"kind":"List","items":[]}'
    assert served.proc.wait(30) == 0
    assert log_has(served, "vgate: 2 workers stopped")
