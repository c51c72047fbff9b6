"""`vgate quickstart` stops what it started, with real processes: Ctrl-C ends the OpenID
Provider and the local provisioner's kube-apiserver and etcd with it; `vgate quickstart
--stop` stops a quickstart left running, and after a SIGKILL finds what it left from the
folder's pid files — leaving alone a process a stale pid file points at."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.quickstart.processes import running
from tests.e2e.conftest import until
from tests.support.oidc import free_port
from tests.support.quickstart_proc import (
    Quickstart,
    gone,
    quickstart_env,
    require_tools,
    tenant_phase,
)
from tests.support.sso_world import REPO_ROOT

pytestmark = [pytest.mark.slow]

EVERYTHING = {
    "the quickstart (gateway)",
    "the OpenID Provider",
    "kube-apiserver of tenant local",
    "etcd",
}


def _start(work: Path, env: dict[str, str]) -> Quickstart:
    qs = Quickstart(
        [
            "--envtest",
            "--dir",
            str(work),
            "--port",
            str(free_port()),
            "--idp-port",
            str(free_port()),
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    qs.banner()
    return qs


def _all_running(work: Path) -> dict[str, int]:
    found = {s.what: s.pid for s in running(work)}
    return found if set(found) == EVERYTHING else {}


def _stop_command(work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "quickstart", "--stop", "--dir", str(work)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ctrl_c_and_stop_leave_nothing_running(tmp_path: Path) -> None:
    require_tools()
    work = tmp_path / "qs"
    env = quickstart_env(tmp_path / "home", PYTHONPATH=str(REPO_ROOT))
    decoy = None
    qs = _start(work, env)
    try:
        # Ctrl-C once the tenant runs: everything goes
        until(lambda: tenant_phase(work, "local") == "Ready", 180, "tenant local Ready")
        pids = until(lambda: _all_running(work), 30, "every process in the pid files")
        assert qs.stop(signal.SIGINT) == 0, qs.output
        assert [what for what, pid in pids.items() if not gone(pid)] == []
        assert (
            f"vgate quickstart: stopped kube-apiserver of tenant local "
            f"(pid {pids['kube-apiserver of tenant local']}), etcd (pid {pids['etcd']})"
        ) in qs.output

        # --stop, from another terminal, of a quickstart that runs
        qs = _start(work, env)
        pids = until(lambda: _all_running(work), 120, "every process in the pid files")
        r = _stop_command(work, env)
        assert r.returncode == 0, r.stderr
        assert (
            f"stopped the quickstart (gateway) (pid {pids['the quickstart (gateway)']})" in r.stderr
        )
        assert qs.proc.wait(30) == 0
        assert [what for what, pid in pids.items() if not gone(pid)] == []

        # killed: its IdP, API server and etcd live on, until --stop
        qs = _start(work, env)
        pids = until(lambda: _all_running(work), 120, "every process in the pid files")
        qs.kill()
        left = {what: pid for what, pid in pids.items() if not gone(pid)}
        assert set(left) == EVERYTHING - {"the quickstart (gateway)"}
        # a stale pid file naming someone else's process: never signalled
        decoy = subprocess.Popen(["sleep", "60"])
        ghost = work / "local" / "tenants" / "ghost"
        ghost.mkdir(parents=True)
        (ghost / "pid").write_text(str(decoy.pid))
        r = _stop_command(work, env)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stderr.splitlines()) == sorted(
            f"stopped {what} (pid {pid})" for what, pid in left.items()
        )
        assert [what for what, pid in left.items() if not gone(pid)] == []
        assert decoy.poll() is None
        r = _stop_command(work, env)
        assert "nothing of the quickstart" in r.stderr and r.returncode == 0
    finally:
        qs.kill()
        _stop_command(work, env)
        if decoy is not None:
            decoy.kill()
            decoy.wait()
