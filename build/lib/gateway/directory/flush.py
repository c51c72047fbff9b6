"""Flushing the group cache of every worker process.

`vgate serve` forks workers and each has its own cache, so a flush is written to a small
shared file (one JSON line per flush, appended) that every worker checks at most once a
second. A worker reads only the lines appended since its last check. The first line is a
random epoch: when the CLI rewrites the file (it compacts it once large) the epoch changes
and every worker flushes everything.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

COMPACT_AT = 64 * 1024
CHECK_INTERVAL = 1.0
MAX_READ = 1 << 20


@dataclass(frozen=True)
class Flush:
    """Flush one user (by the value the directory is searched with), or all if None."""

    user: str | None


def _new_file(path: Path, first: str | None) -> None:
    """Atomically replace the file with a fresh epoch (workers then flush everything)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({"epoch": secrets.token_hex(8)}) + "\n")
        if first is not None:
            out.write(first)
    os.replace(tmp, path)


def request_flush(path: Path, user: str | None) -> None:
    """Record a flush request. The file starts with an epoch line; it is created (or, once
    large, rewritten) owner-only with a new epoch, which flushes everything."""
    line = json.dumps({"user": user} if user is not None else {"all": True}) + "\n"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        _new_file(path, line)
        return
    if size > COMPACT_AT:
        _new_file(path, None)
        if user is None:
            return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(line)


class FlushWatcher:
    """Tells a worker which flushes were requested since it last looked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._epoch = self._read_epoch()
        self._offset = self._size()
        self._next_check = 0.0

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _read_epoch(self) -> str | None:
        try:
            with open(self.path, "rb") as f:
                first = f.readline(256)
        except OSError:
            return None
        return first.decode("ascii", "replace")

    def due(self, now: float) -> bool:
        return now >= self._next_check

    def poll(self, now: float) -> list[Flush]:
        """New flush requests (one stat when nothing changed)."""
        self._next_check = now + CHECK_INTERVAL
        size = self._size()
        if size == self._offset:
            return []
        flushes: list[Flush] = []
        epoch = self._read_epoch()
        if epoch != self._epoch:
            if self._epoch is not None:
                flushes.append(Flush(None))  # a rewritten file: requests may be lost
            self._epoch = epoch
            self._offset = len(epoch.encode()) if epoch else 0
        if size < self._offset:
            self._offset = size
            return [Flush(None)]
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(min(size - self._offset, MAX_READ))
        except OSError:
            return [Flush(None)]
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                flushes.append(Flush(None))
                continue
            user = doc.get("user") if isinstance(doc, dict) else None
            flushes.append(Flush(user if isinstance(user, str) else None))
        return flushes
