"""Processes the bench starts: CPU pinning, file-descriptor limits, CPU time and RSS from /proc."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import resource
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NOFILE = 65536
NICE = -5  # what the bench starts runs ahead of other work on the machine (root only)


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def proxy_cpu() -> set[int] | None:
    """The core the proxy under test runs on (None: one core only, no pinning)."""
    c = cpus()
    return {c[0]} if len(c) > 1 else None


def load_cpu() -> set[int] | None:
    """The core(s) for the load generator and the upstream."""
    c = cpus()
    return set(c[1:]) if len(c) > 1 else None


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may go past the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (limit, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return want
        except (ValueError, OSError):
            continue
    return soft


def preexec(cpu: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        os.setpgrp()  # its own process group: stopping it stops its children
        raise_nofile()
        with contextlib.suppress(OSError):  # not root: stay at the default priority
            os.setpriority(os.PRIO_PROCESS, 0, NICE)
        if cpu:
            os.sched_setaffinity(0, cpu)

    return setup


def free_port() -> int:
    """An ephemeral port picked by the kernel (for programs that need a port in a file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f}s")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process the bench started (its whole process group), then make sure."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    out = [pid]
    for p in out:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                out.extend(int(c) for c in children)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of `pids` (from /proc/<pid>/stat)."""
    return sum(cpu_times(pids))


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of `pids` (from /proc/<pid>/stat)."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rpartition(")")[2].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
    return user / CLK_TCK, system / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of `pids` (shared pages split among the processes that map
    them: forked workers are not counted twice), from /proc/<pid>/smaps_rollup."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def connections_to(pids: list[int], peers: set[tuple[str, int]]) -> int:
    """Established TCP connections that `pids` hold (as descriptors) to any of `peers`
    ((IPv4 address, port)): their socket inodes from /proc/<pid>/fd, matched against
    /proc/net/tcp and tcp6 (IPv4-mapped addresses) of the first pid's network namespace."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    if not inodes:
        return 0
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pids[0]}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "01" or f[9] not in inodes:  # 01: ESTABLISHED
                continue
            if _peer(f[2]) in peers:
                count += 1
    return count


def _peer(field: str) -> tuple[str, int] | None:
    """`0100007F:1F90` (tcp) or a 32-digit address (tcp6): (IPv4 address, port); None for
    an IPv6 address that is not IPv4-mapped. The kernel prints each 32-bit word of the
    address in host byte order."""
    addr, _, port = field.partition(":")
    words = [int(addr[i : i + 8], 16) for i in range(0, len(addr), 8)]
    raw = struct.pack(f"={len(words)}I", *words)
    if len(raw) == 16:
        mapped = ipaddress.IPv6Address(raw).ipv4_mapped
        if mapped is None:
            return None
        raw = mapped.packed
    return socket.inet_ntoa(raw), int(port, 16)
