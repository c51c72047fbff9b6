"""Token buckets and open-stream counts in one fixed-size table that every worker shares.

The table lives in an anonymous shared memory mapping created before `vgate serve` forks
its workers, so all of them draw from the same buckets: a limit holds for the gateway, not
per process. Each slot belongs to one key (a user in a tenant, a tenant, or everything):

    key hash (int64) | tokens (float64) | last refill (float64, CLOCK_MONOTONIC)

followed by one column of open-stream counts per worker (int64), so a restarted worker
can zero the counts of the one it replaces without touching anyone else's. A key hashes to
a group of `GROUP` slots, guarded by one of `STRIPES` process-shared locks (only when
there are several workers). A key unused for `idle_seconds` with no open stream gives its
slot up; when a group is full the least recently used slot without open streams is taken
over (that key starts with a full bucket again); when all of a group's slots hold open
streams, the new key is not limited (counted as `bypassed`). Memory: `slots` * (3 +
workers) * 8 bytes, whatever the number of users.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vgate.limits")

GROUP = 8  # slots a key may live in
STRIPES = 16  # process-shared locks
WORDS = 3  # per slot: key hash, tokens, last refill
LOCK_TIMEOUT = 0.005  # a lock held longer means its holder died holding it: do not wait
MAX_LOCAL_KEYS = 65536


def key_hash(*parts: str) -> int:
    """A key's 64-bit hash, the same in every worker (forked workers share the interpreter's
    hash seed), never 0 (0 marks a free slot)."""
    return hash(parts) or 1


class _NoLock:
    """The lock of a table only one process uses."""

    def release(self) -> None:
        return None


_NO_LOCK = _NoLock()


class BucketTable:
    """Shared rate buckets and stream counts; `worker` is this process's column."""

    def __init__(
        self,
        slots: int,
        *,
        workers: int = 1,
        idle_seconds: float = 300.0,
        on_bypass: Callable[[str], None] | None = None,
    ) -> None:
        self.groups = max(1, slots // GROUP)
        self.slots = self.groups * GROUP
        self.workers = max(1, workers)
        self.idle_seconds = idle_seconds
        self.worker = 0
        self.on_bypass = on_bypass or (lambda cause: None)
        self._memory = mmap.mmap(-1, self.slots * (WORDS + self.workers) * 8)
        self._q = memoryview(self._memory).cast("q")
        self._d = memoryview(self._memory).cast("d")
        self._streams_at = self.slots * WORDS
        self._locks = [multiprocessing.Lock() for _ in range(STRIPES)] if self.workers > 1 else None
        self._local: dict[int, int] = {}  # key hash -> slot, as last found by this process
        self._stuck_logged = False

    def start_worker(self, worker: int) -> None:
        """This process serves as worker `worker` (0-based): its column starts at zero
        (the streams of a worker it replaces ended with that worker)."""
        self.worker = worker % self.workers
        base = self._streams_at + self.worker * self.slots
        for i in range(self.slots):
            self._q[base + i] = 0
        self._local.clear()

    def _lock(self, h: int) -> Any:
        """Key `h`'s lock, taken (release it), or None when it could not be taken in time:
        its holder died holding it, and the caller does not limit."""
        if self._locks is None:
            return _NO_LOCK
        lock = self._locks[(h % self.groups) % STRIPES]
        if lock.acquire(True, LOCK_TIMEOUT):
            return lock
        if not self._stuck_logged:
            self._stuck_logged = True
            log.error(
                "a rate-limit lock was not released (a worker died holding it?): keys "
                "behind it are not limited until the gateway restarts"
            )
        self.on_bypass("lock")
        return None

    def _streams(self, slot: int) -> int:
        q, at, n = self._q, self._streams_at + slot, self.slots
        return sum(q[at + w * n] for w in range(self.workers))

    def _slot(self, h: int, now: float) -> int:
        """The slot of key `h` (taken if it had none), or -1 when its group is all streams.
        Call with the key's lock held, after `_local` did not know it."""
        q, d = self._q, self._d
        first = (h % self.groups) * GROUP
        free = oldest = -1
        oldest_at = float("inf")
        for i in range(first, first + GROUP):
            k = q[i * WORDS]
            if k == h:
                self._remember(h, i)
                return i
            if free >= 0:
                continue
            if k == 0:
                free = i
                continue
            last = d[i * WORDS + 2]
            if self._streams(i):
                continue
            if now - last >= self.idle_seconds:
                free = i
            elif last < oldest_at:
                oldest, oldest_at = i, last
        slot = free if free >= 0 else oldest
        if slot < 0:
            self.on_bypass("full")
            return -1
        q[slot * WORDS] = h
        d[slot * WORDS + 1] = -1.0  # a new bucket: full at its first use
        d[slot * WORDS + 2] = now
        self._remember(h, slot)
        return slot

    def _remember(self, h: int, slot: int) -> None:
        if len(self._local) >= MAX_LOCAL_KEYS:
            self._local.clear()
        self._local[h] = slot

    def take(self, h: int, rate: float, burst: float, now: float) -> float:
        """Take one token from key `h`'s bucket: 0.0 if there was one, else the seconds
        until there will be."""
        lock = self._lock(h) if self._locks is not None else _NO_LOCK
        if lock is None:
            return 0.0
        try:
            slot = self._local.get(h)
            if slot is None or self._q[slot * WORDS] != h:
                slot = self._slot(h, now)
                if slot < 0:
                    return 0.0
            d = self._d
            at = slot * WORDS + 1
            tokens = d[at]
            if tokens < 0.0:
                tokens = burst
            else:
                tokens += (now - d[at + 1]) * rate
                if tokens > burst:
                    tokens = burst
            d[at + 1] = now
            if tokens >= 1.0:
                d[at] = tokens - 1.0
                return 0.0
            d[at] = tokens
            return (1.0 - tokens) / rate
        finally:
            lock.release()

    def give_back(self, h: int, burst: float) -> None:
        """Return the token `take` took (a later limit refused the request)."""
        lock = self._lock(h)
        if lock is None:
            return
        try:
            slot = self._local.get(h)
            if slot is not None and self._q[slot * WORDS] == h:
                at = slot * WORDS + 1
                self._d[at] = min(burst, self._d[at] + 1.0)
        finally:
            lock.release()

    def open_stream(self, h: int, most: int, now: float) -> int:
        """Count one more open stream for key `h` if it has fewer than `most`: its slot
        (for `close_stream`), -2 when it is at the limit, -1 when not counted."""
        lock = self._lock(h)
        if lock is None:
            return -1
        try:
            slot = self._local.get(h)
            if slot is None or self._q[slot * WORDS] != h:
                slot = self._slot(h, now)
            if slot < 0:
                return -1
            if self._streams(slot) >= most:
                return -2
            self._q[self._streams_at + self.worker * self.slots + slot] += 1
            self._d[slot * WORDS + 2] = now
            return slot
        finally:
            lock.release()

    def close_stream(self, h: int, slot: int, now: float) -> None:
        """A stream `open_stream` counted has ended."""
        lock = self._lock(h)
        if lock is None:
            return
        try:
            at = self._streams_at + self.worker * self.slots + slot
            if self._q[slot * WORDS] == h and self._q[at] > 0:
                self._q[at] -= 1
                self._d[slot * WORDS + 2] = now
        finally:
            lock.release()

    def close(self) -> None:
        self._q.release()
        self._d.release()
        self._memory.close()
