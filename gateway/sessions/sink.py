"""Where casts are kept: the `SessionSink` interface and the directory that implements it.

Every call is made off the event loop (in a thread) and may block. A remote sink — object
storage, a log service — implements the same interface: `open` says before the session is
upgraded whether it can take one more recording, `write` gets the cast's bytes in order,
`finish` ends it, `discard` drops a session that never started.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from pathlib import Path
from typing import Protocol

from gateway.sessions.cast import file_name

log = logging.getLogger("vgate.sessions")

#: a cast modified this recently may belong to a session still running in another worker:
#: rotation leaves it alone (unless it is past the age limit)
ACTIVE_SECONDS = 3600.0


class RecordingUnavailable(Exception):
    """A recording cannot be written; the message says why, for the client's Status."""


class SinkFile(Protocol):
    def write(self, data: bytes) -> None:
        """Append cast bytes; raises OSError."""

    def finish(self) -> None:
        """Everything is written: make it durable and visible."""

    def discard(self) -> None:
        """The session never started: drop what was made for it."""


class SessionSink(Protocol):
    def open(self, session: str, started: float) -> SinkFile:
        """A new, empty recording; raises `RecordingUnavailable`."""

    def maintain(self, active: set[str]) -> None:
        """Housekeeping between writes (rotation); `active`: sessions still being written."""


class CastFile:
    """One cast in the directory, written through a buffered file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._file = os.fdopen(fd, "wb", buffering=64 * 1024)

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()  # on disk (in the page cache) within a flush interval

    def finish(self) -> None:
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class DirectorySink:
    """Casts as files in one directory (mode 0700, files 0600), named so that name order
    is start order. Rotation removes casts older than `max_age_seconds`, then the oldest
    while the directory holds more than `max_directory_bytes`. `open` refuses when the
    directory cannot be created or written, or has less than `min_free_bytes` free."""

    def __init__(
        self,
        directory: Path,
        *,
        max_directory_bytes: int,
        max_age_seconds: float,
        min_free_bytes: int,
    ) -> None:
        self.directory = Path(directory)
        self.max_directory_bytes = max_directory_bytes
        self.max_age_seconds = max_age_seconds
        self.min_free_bytes = min_free_bytes

    def open(self, session: str, started: float) -> CastFile:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            stats = os.statvfs(self.directory)
        except OSError as exc:
            raise RecordingUnavailable(
                f"the recording directory cannot be used: {_why(exc)}"
            ) from None
        free = stats.f_bavail * stats.f_frsize
        if free < self.min_free_bytes:
            raise RecordingUnavailable(
                f"the recording directory has {free >> 20} MiB free, less than the "
                f"{self.min_free_bytes >> 20} MiB required"
            )
        path = self.directory / file_name(started, session)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise RecordingUnavailable(
                f"the recording file cannot be created: {_why(exc)}"
            ) from None
        return CastFile(path, fd)

    def maintain(self, active: set[str]) -> None:
        """Rotate: by age, then by the directory's total size, oldest first (`active`: the
        session ids this process is still writing)."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".cast"))
        except OSError as exc:
            log.warning("session recordings: cannot list %s: %s", self.directory, exc)
            return
        now = time.time()
        kept: list[tuple[str, int, float]] = []
        for name in names:
            try:
                st = os.stat(self.directory / name)
            except OSError:
                continue
            if now - st.st_mtime > self.max_age_seconds and _session_of(name) not in active:
                self._remove(name, "older than the age limit")
            else:
                kept.append((name, st.st_size, st.st_mtime))
        total = sum(size for _, size, _ in kept)
        for name, size, mtime in kept:
            if total <= self.max_directory_bytes:
                break
            if _session_of(name) in active or now - mtime < ACTIVE_SECONDS:
                continue
            self._remove(name, "the directory is over its size limit")
            total -= size

    def _remove(self, name: str, why: str) -> None:
        try:
            os.unlink(self.directory / name)
            log.info("session recording %s removed: %s", name, why)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("session recording %s could not be removed: %s", name, exc)


def _session_of(name: str) -> str:
    """The session id in a cast's file name (`<UTC start>-<session>.cast`)."""
    return name[17:-5]


def _why(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
