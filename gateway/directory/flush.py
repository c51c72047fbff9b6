"""Flushing the group cache of every worker process.

`vgate serve` forks workers and each has its own cache, so a flush is written to a small
shared file (one JSON line per flush, appended) that every worker checks at most once a
second. A worker reads only the lines appended since its last check; a file that shrank or
was replaced means "flush everything". The CLI compacts the file once it grows large.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

COMPACT_AT = 64 * 1024
CHECK_INTERVAL = 1.0
MAX_READ = 1 << 20


@dataclass(frozen=True)
class Flush:
    """Flush one user (by the value the directory is searched with), or all if None."""

    user: str | None


def request_flush(path: Path, user: str | None) -> None:
    """Append a flush request (the file is created owner-only)."""
    line = json.dumps({"user": user} if user is not None else {"all": True}) + "\n"
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        size = 0
    if size > COMPACT_AT:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps({"all": True}) + "\n")
        os.replace(tmp, path)  # a new inode: workers flush everything
        if user is None:
            return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(line)


class FlushWatcher:
    """Tells a worker which flushes were requested since it last looked."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._inode, self._offset = self._stat()
        self._next_check = 0.0

    def _stat(self) -> tuple[int, int]:
        try:
            st = self.path.stat()
        except OSError:
            return 0, 0
        return st.st_ino, st.st_size

    def due(self, now: float) -> bool:
        return now >= self._next_check

    def poll(self, now: float) -> list[Flush]:
        """New flush requests (cheap when nothing changed: one stat)."""
        self._next_check = now + CHECK_INTERVAL
        inode, size = self._stat()
        if inode == self._inode and size == self._offset:
            return []
        flushes: list[Flush] = []
        if inode != self._inode or size < self._offset:
            flushes.append(Flush(None))
            self._inode, self._offset = inode, 0
        if size > self._offset:
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
