"""One sign-in or refresh at a time per token-cache entry, across processes.

kubectl runs its exec plugin once per kubectl process, and scripts start many kubectl
processes at once. With an expired token every one of them would open a browser, or
refresh with the same refresh token (refresh tokens rotate: the IdP treats the second use
as a replay and revokes the whole token family). `EntryLock` serializes them on an `flock`
of `<entry>.lock` in the cache folder; the first does the work, the others wait and then
find its token in the cache.

- The wait is bounded (`timeout`) and polled; a waiter says once on stderr whom it waits for.
- A crashed holder leaves no stale lock: the kernel drops an `flock` with the last file
  descriptor of its holder (an NFS client turns it into a byte-range lock with the same
  rule). The lock file itself stays; it is never the lock.
- The lock file records who holds it, what it is doing and how its last sign-in ended. When
  that sign-in fails (denied, browser closed, timed out), the processes that were waiting
  for it fail with the same message instead of opening one browser each, one after another.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.login.errors import LoginError

POLL_SECONDS = 0.05
NOTICE_AFTER_SECONDS = 2.0
MAX_RECORD_BYTES = 4096


class LockWaitTimeout(LoginError):
    """Another process held the entry's lock for longer than this one may wait."""


class EntryLock:
    """A context manager holding the exclusive lock of one cache entry."""

    def __init__(
        self, path: Path, *, timeout: float, notify: Callable[[str], None] | None = None
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.notify = notify
        self.waited_since: float | None = None  # wall clock, when the lock was contended
        self._fd: int | None = None

    # -- acquire / release ----------------------------------------------------------------

    def __enter__(self) -> EntryLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._acquire(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def _acquire(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        self.waited_since = time.time()
        start = time.monotonic()
        noticed = False
        while True:
            time.sleep(POLL_SECONDS)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            if waited >= self.timeout:
                raise LockWaitTimeout(
                    f"gave up after {waited:.0f} s waiting for {self._holder(fd)} "
                    f"(lock file {self.path}); run the command again, or stop that process"
                )
            if not noticed and waited >= NOTICE_AFTER_SECONDS and self.notify is not None:
                noticed = True
                self.notify(f"vgate: waiting for {self._holder(fd)} to finish")

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the lock

    # -- the record in the lock file ------------------------------------------------------

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            doc = json.loads(os.pread(fd, MAX_RECORD_BYTES, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _holder(self, fd: int) -> str:
        doc = self._read(fd)
        pid, doing, since = doc.get("pid"), doc.get("doing"), doc.get("since")
        if not isinstance(pid, int) or not isinstance(doing, str) or doc.get("done"):
            return "another vgate login"
        age = f" for {time.time() - since:.0f} s" if isinstance(since, int | float) else ""
        return f"another vgate login (pid {pid}, {doing[:80]}{age})"

    def _write(self, doc: dict[str, Any]) -> None:
        assert self._fd is not None, "not holding the lock"
        data = json.dumps(doc).encode()[:MAX_RECORD_BYTES]
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
        except OSError:
            pass  # the record only informs other processes; the lock is what counts

    def doing(self, what: str) -> None:
        """Tell waiting processes what this holder is doing (keeps the last failure)."""
        assert self._fd is not None, "not holding the lock"
        old = self._read(self._fd)
        self._write(
            {
                "pid": os.getpid(),
                "since": time.time(),
                "doing": what,
                "failed_at": old.get("failed_at"),
                "failure": old.get("failure"),
            }
        )

    def failed(self, message: str) -> None:
        """Record that this holder's sign-in failed, for the processes waiting for it."""
        self._write(
            {"pid": os.getpid(), "done": True, "failed_at": time.time(), "failure": message[:1000]}
        )

    def succeeded(self) -> None:
        self._write({"pid": os.getpid(), "done": True})

    def failure_while_waiting(self) -> str | None:
        """The failure of the sign-in this process waited for, if it failed meanwhile."""
        if self.waited_since is None or self._fd is None:
            return None
        doc = self._read(self._fd)
        failed_at, failure, pid = doc.get("failed_at"), doc.get("failure"), doc.get("pid")
        if (
            isinstance(failed_at, int | float)
            and failed_at >= self.waited_since
            and isinstance(failure, str)
        ):
            return f"the sign-in this command waited for (vgate login pid {pid}) failed: {failure}"
        return None
