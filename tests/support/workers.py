"""Reach each worker process of a running `vgate serve --workers N` on purpose: the kernel
hands accepted connections to whichever worker asks first, so a test opens connections
until it holds one per worker, telling which worker accepted each from /proc (the socket
inode in /proc/net/tcp and the worker's /proc/<pid>/fd links)."""

from __future__ import annotations

import http.client
import os
import ssl
import time
from pathlib import Path


def worker_pids(master: int) -> set[int]:
    """The children of the `vgate serve` master."""
    found: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        children = (task / "children").read_text().split()
        found.update(int(pid) for pid in children)
    return found


def _hex_port(port: int) -> str:
    return f"{port:04X}"


def _socket_inode(server_port: int, client_port: int) -> int | None:
    """The inode of the server side of the loopback connection client_port → server_port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if local.endswith(":" + _hex_port(server_port)) and remote.endswith(
            ":" + _hex_port(client_port)
        ):
            return int(fields[9])
    return None


def owner(pids: set[int], inode: int) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def one_connection_per_worker(
    port: int,
    master: int,
    *,
    tls: ssl.SSLContext | None = None,
    attempts: int = 60,
    path: str = "/healthz",
) -> dict[int, http.client.HTTPConnection]:
    """worker pid → a keep-alive connection that worker accepted (after one request)."""
    pids = worker_pids(master)
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(attempts):
        if set(held) == pids:
            return held
        conn = (
            http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
            if tls is not None
            else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        )
        conn.request("GET", path)
        conn.getresponse().read()
        assert conn.sock is not None
        inode = _socket_inode(port, conn.sock.getsockname()[1])
        pid = owner(pids, inode) if inode is not None else None
        if pid is not None and pid not in held:
            held[pid] = conn
        else:
            conn.close()
            time.sleep(0.01)
    raise AssertionError(
        f"could not reach every worker of {master}: got {sorted(held)} of {sorted(pids)}"
    )


def worker_of(master: int, server_port: int, client_port: int) -> int | None:
    """Which worker of `master` holds the loopback connection client_port → server_port."""
    inode = _socket_inode(server_port, client_port)
    return owner(worker_pids(master), inode) if inode is not None else None
