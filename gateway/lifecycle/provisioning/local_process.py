"""Start, find and stop the local provisioner's long-running processes by pid file.

Processes run in their own session so they outlive a gateway restart; a pid counts as ours
only while `/proc/<pid>/cmdline` still names the same binary (pids get reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class BinaryMissing(Exception):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"{path} not found: set $KUBEBUILDER_ASSETS or "
            "lifecycle.local.assets_dir to a folder with kube-apiserver and etcd"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running_pid(pid_file: Path, binary: str) -> int | None:
    running = _running(pid_file, binary)
    return running[0] if running else None


def running_executable(pid_file: Path, binary: str) -> str | None:
    """The path the process of `pid_file` was started from (which version it runs)."""
    running = _running(pid_file, binary)
    return running[1] if running else None


def _running(pid_file: Path, binary: str) -> tuple[int, str] | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    first = cmdline.split(b"\0", 1)[0]
    if not first.endswith(binary.encode()):
        return None
    return pid, first.decode(errors="replace")


def start(binary: Path, args: list[str], pid_file: Path, log_file: Path) -> int:
    if not binary.is_file():
        raise BinaryMissing(binary)
    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def stop(pid_file: Path, binary: str, *, grace: float = 10.0) -> None:
    pid = running_pid(pid_file, binary)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and running_pid(pid_file, binary) is not None:
            _reap(pid)
            time.sleep(0.1)
        if running_pid(pid_file, binary) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
    pid_file.unlink(missing_ok=True)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
