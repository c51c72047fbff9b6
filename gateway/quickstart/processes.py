"""The processes a quickstart started, found again from its folder's pid files — never by
process name, so nothing of another user or another quickstart is touched.

- `quickstart.pid` (the quickstart itself: the gateway runs in it) and `idp.pid` (the local
  OpenID Provider) hold `<pid> <start time>`; a pid counts only while the process with that
  pid started at that time (pids get reused).
- `local/tenants/<name>/pid` (a tenant's kube-apiserver) and `local/etcd/pid` (the etcd they
  share) are the local provisioner's; a pid counts only while its command line starts with
  that binary and names this folder's `local/` (its data and certificate folders).

In both cases the process must belong to the current user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.lifecycle.provisioning import local_process
from gateway.lifecycle.provisioning.local_versions import APISERVER

QUICKSTART_PID = "quickstart.pid"
IDP_PID = "idp.pid"


@dataclass(frozen=True)
class Started:
    """A process of this quickstart that is running now."""

    what: str
    pid: int
    pid_file: Path
    binary: str | None = None  # the local provisioner's: stopped through its pid file

    def __str__(self) -> str:
        return f"{self.what} (pid {self.pid})"


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot); None if no such process or a
    zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return None if fields[0] == "Z" else fields[19]


def _mine(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def record(pid_file: Path, pid: int) -> None:
    """Write `pid` and its start time to `pid_file`."""
    pid_file.write_text(f"{pid} {_start_time(pid) or ''}\n")


def _recorded(pid_file: Path) -> int | None:
    """The pid in a `record`ed file if that very process runs (and is ours)."""
    try:
        pid_text, started = pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if _start_time(pid) == started and _mine(pid) else None


def _provisioned(pid_file: Path, binary: str, directory: Path) -> int | None:
    pid = local_process.running_pid(pid_file, binary)
    if pid is None or not _mine(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if f"{directory}/local/".encode() in cmdline else None


def running(directory: Path) -> list[Started]:
    """What runs now, in stop order: the quickstart, the IdP, API servers, etcd last."""
    found = []
    for name, what in (
        (QUICKSTART_PID, "the quickstart (gateway)"),
        (IDP_PID, "the OpenID Provider"),
    ):
        pid = _recorded(directory / name)
        if pid is not None:
            found.append(Started(what, pid, directory / name))
    local = directory / "local"
    tenant_pids = sorted((local / "tenants").glob("*/pid"))
    for pid_file, binary, what in (
        *((f, APISERVER, f"kube-apiserver of tenant {f.parent.name}") for f in tenant_pids),
        (local / "etcd" / "pid", "etcd", "etcd"),
    ):
        pid = _provisioned(pid_file, binary, directory)
        if pid is not None:
            found.append(Started(what, pid, pid_file, binary))
    return found


def _gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # our own child: reap it
    return _start_time(pid) is None


def terminate(started: Started, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; the pid file is removed."""
    if started.binary is not None:
        local_process.stop(started.pid_file, started.binary, grace=grace)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(started.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _gone(started.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(started.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(started.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _gone(started.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    started.pid_file.unlink(missing_ok=True)


def stop_all(
    directory: Path, *, grace: float = 10.0, quickstart_grace: float = 60.0, skip: int | None = None
) -> list[Started]:
    """Stop every process of the quickstart in `directory` (but pid `skip`); returns what was
    running. The quickstart itself goes first and stops the rest on its way out; whatever
    is left (it was killed) is stopped here."""
    stopped: list[Started] = []
    for started in running(directory):
        if started.pid == skip:
            continue
        if started.pid_file.name == QUICKSTART_PID:
            terminate(started, quickstart_grace)
        elif _still(started, directory):
            terminate(started, grace)
        stopped.append(started)
    return stopped


def _still(started: Started, directory: Path) -> bool:
    """Whether `started` still runs (the quickstart may have stopped it meanwhile)."""
    return any(s.pid == started.pid for s in running(directory))
