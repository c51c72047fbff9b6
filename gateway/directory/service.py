"""Step 3 of the request path: the directory groups of an identity, cached per user.

A fresh cache entry is answered synchronously (no task, no round trip). A miss runs one
lookup in a worker thread (concurrent misses for the same user share it). When the
directory fails, entries younger than `max_staleness_seconds` keep being served, lookups
pause for `retry_interval_seconds`, and until a lookup succeeds again an expired entry is
answered at once while its refresh runs in the background. A user with nothing young
enough is refused (`DirectoryUnavailable` → 503): groups are never invented.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from cachetools import LRUCache

from gateway.config.model import LDAP
from gateway.directory.entry import Membership, not_found
from gateway.directory.errors import (
    USER_KINDS,
    DirectoryError,
    DirectoryRefused,
    DirectoryUnavailable,
)
from gateway.directory.flush import FlushWatcher
from gateway.identity import Identity
from gateway.metrics import Metrics

log = logging.getLogger("vgate.directory")


class Source(Protocol):
    """The blocking directory behind the cache (run in worker threads)."""

    def lookup(self, value: str) -> Membership: ...

    def check(self) -> None:
        """Connect and bind once; raise `DirectoryError` when that fails."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Cached:
    membership: Membership
    fetched_at: float


def lookup_value(identity: Identity, claim: str) -> str | None:
    """The token claim the directory is searched with (a string, else None)."""
    value = identity.claims.get(claim)
    return value if isinstance(value, str) else None


class Directory:
    def __init__(
        self,
        config: LDAP,
        source: Source,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.source = source
        self.metrics = metrics
        self.clock = clock
        self._cache: LRUCache[str, _Cached] = LRUCache(maxsize=config.cache_size)
        self._inflight: dict[str, asyncio.Future[Membership]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._executor = ThreadPoolExecutor(config.pool_size, thread_name_prefix="vgate-ldap")
        self._slots = asyncio.Semaphore(config.pool_size)
        self._down_until = 0.0
        self._healthy = True
        self._last_error = ""
        self._flush = FlushWatcher(config.flush_file)
        self.deadline = config.connect_timeout_seconds + 2 * config.timeout_seconds
        cache_counter = metrics.directory_cache
        self._counted = {
            r: cache_counter.labels(r) for r in ("hit", "negative_hit", "miss", "stale", "refused")
        }
        self.round_trips = 0

    @staticmethod
    def key(value: str) -> str:
        return value.casefold()

    # -- synchronous fast path ----------------------------------------------------------

    def cached(self, value: str) -> Membership | None:
        """A usable cached answer, None on a miss; DirectoryUnavailable when the directory
        is known to be down and nothing young enough is cached."""
        now = self.clock()
        if self._flush.due(now):
            self._apply_flushes(now)
        hit = self._cache.get(self.key(value))
        if hit is not None:
            age = now - hit.fetched_at
            ttl = (
                self.config.cache_ttl_seconds
                if hit.membership.found
                else self.config.negative_ttl_seconds
            )
            if age < ttl:
                self._counted["hit" if hit.membership.found else "negative_hit"].inc()
                return hit.membership
        if now < self._down_until:
            return self._stale_or_refuse(hit, now)
        if (
            not self._healthy
            and hit is not None
            and now - hit.fetched_at < self.config.max_staleness_seconds
        ):
            # the directory failed last time: answer from the cache now and retry behind
            # the scenes, rather than make this request wait for a directory that may hang
            self._revalidate(value)
            self._counted["stale"].inc()
            return hit.membership
        return None

    def _revalidate(self, value: str) -> None:
        key = self.key(value)
        if key in self._inflight:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pending = loop.create_future()
        self._inflight[key] = pending
        task = loop.create_task(self._fill(key, value, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stale_or_refuse(self, hit: _Cached | None, now: float) -> Membership:
        if hit is not None and now - hit.fetched_at < self.config.max_staleness_seconds:
            self._counted["stale"].inc()
            return hit.membership
        self._counted["refused"].inc()
        raise DirectoryUnavailable(f"the directory is unavailable: {self._last_error}")

    def _apply_flushes(self, now: float) -> None:
        for flush in self._flush.poll(now):
            if flush.user is None:
                self._cache.clear()
                log.info("directory cache flushed (all users)")
            else:
                self._cache.pop(self.key(flush.user), None)
                log.info("directory cache flushed for %s", flush.user)

    # -- miss path ----------------------------------------------------------------------

    async def membership(self, value: str) -> Membership:
        """The cached answer, or one lookup shared by every concurrent caller."""
        cached = self.cached(value)
        if cached is not None:
            return cached
        key = self.key(value)
        pending = self._inflight.get(key)
        if pending is None:
            self._counted["miss"].inc()
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key] = pending
            task = asyncio.create_task(self._fill(key, value, pending))
            self._tasks.add(task)  # keep a reference until done (even if every waiter left)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(pending)

    async def _fill(self, key: str, value: str, result: asyncio.Future[Membership]) -> None:
        try:
            found = await self._lookup(value)
        except DirectoryError as exc:
            if exc.kind in USER_KINDS:  # this user's answer: refuse them, and only them
                self._refused(value, exc)
                result.set_exception(DirectoryRefused(str(exc)))
                return
            self._failed(exc)
            try:
                found = self._stale_or_refuse(self._cache.get(key), self.clock())
            except DirectoryUnavailable as unavailable:
                result.set_exception(unavailable)
                return
            result.set_result(found)
        except BaseException as exc:
            result.set_exception(exc)
        else:
            self._cache[key] = _Cached(found, self.clock())
            self._down_until = 0.0
            self._healthy = True
            result.set_result(found)
        finally:
            self._inflight.pop(key, None)
            if result.done() and not result.cancelled():
                result.exception()  # mark retrieved: waiters may all have gone

    async def _lookup(self, value: str) -> Membership:
        if not value:
            return not_found(value)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.deadline):
                async with self._slots:
                    self.round_trips += 1
                    found = await loop.run_in_executor(self._executor, self.source.lookup, value)
        except TimeoutError:
            raise DirectoryError("timeout", f"no answer within {self.deadline:.1f}s") from None
        finally:
            self.metrics.directory_latency.observe(time.perf_counter() - started)
        self.metrics.directory_lookups.labels("found" if found.found else "not_found").inc()
        return found

    def _refused(self, value: str, exc: DirectoryError) -> None:
        self.metrics.directory_lookups.labels("error").inc()
        self.metrics.directory_errors.labels(exc.kind).inc()
        log.warning("directory lookup of %r refused (%s): %s", value[:256], exc.kind, exc)

    def _failed(self, exc: DirectoryError) -> None:
        self.metrics.directory_lookups.labels("error").inc()
        self.metrics.directory_errors.labels(exc.kind).inc()
        if self.clock() >= self._down_until:
            log.warning("directory lookup failed (%s): %s", exc.kind, exc)
        self._last_error = str(exc)
        self._healthy = False
        self._down_until = self.clock() + self.config.retry_interval_seconds

    async def check(self) -> str | None:
        """Connect and bind once (at start-up); the problem, or None when it works."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.deadline):
                await loop.run_in_executor(self._executor, self.source.check)
        except DirectoryError as exc:
            self.metrics.directory_errors.labels(exc.kind).inc()
            return str(exc)
        except TimeoutError:
            return f"no answer within {self.deadline:.1f}s"
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.source.close()
