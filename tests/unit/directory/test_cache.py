"""Unit tests of the group cache with a fault-injecting directory: TTL, single flight,
bounded staleness then fail closed, negative caching, flush across processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.directory import Directory, DirectoryRefused, DirectoryUnavailable
from gateway.directory.errors import DirectoryError
from gateway.directory.flush import request_flush
from gateway.metrics import Metrics
from tests.support.directory.fakes import FakeSource, ldap_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, **overrides) -> tuple[Directory, FakeSource, Clock, Metrics]:
    source = FakeSource({"alice": ["admins"], "bob": []})
    clock = Clock()
    metrics = Metrics()
    directory = Directory(ldap_config(tmp_path, **overrides), source, metrics, clock=clock)
    return directory, source, clock, metrics


def count(metrics: Metrics, result: str) -> float:
    return metrics.directory_cache.labels(result)._value.get()


def test_hit_within_ttl_needs_no_lookup(tmp_path: Path) -> None:
    d, source, clock, metrics = make(tmp_path)
    assert d.cached("alice") is None
    first = asyncio.run(d.membership("alice"))
    assert first.found and source.calls == 1
    for _ in range(100):
        assert d.cached("ALICE") is first  # keys are case-insensitive
    assert source.calls == 1 and count(metrics, "hit") == 100
    clock.now += 11
    assert d.cached("alice") is None  # expired: a miss again


def test_concurrent_misses_share_one_lookup(tmp_path: Path) -> None:
    d, source, _, metrics = make(tmp_path)
    source.delay = 0.2

    async def many():
        return await asyncio.gather(*(d.membership("alice") for _ in range(50)))

    results = asyncio.run(many())
    assert source.calls == 1
    assert all(r is results[0] for r in results)
    assert count(metrics, "miss") == 1


def test_stale_served_while_down_then_refused(tmp_path: Path) -> None:
    d, source, clock, metrics = make(tmp_path)
    asyncio.run(d.membership("alice"))
    source.fail = DirectoryError("connect", "connection refused")
    clock.now += 11  # past the TTL
    stale = asyncio.run(d.membership("alice"))  # the lookup fails: stale is served
    assert stale.found and source.calls == 2
    assert count(metrics, "stale") == 1
    # within the retry interval nothing is asked of the directory: served synchronously
    assert d.cached("alice") is stale and source.calls == 2
    with pytest.raises(DirectoryUnavailable):  # a user never seen: fail closed
        d.cached("bob")
    clock.now += 60  # past max staleness
    with pytest.raises(DirectoryUnavailable):
        asyncio.run(d.membership("alice"))
    with pytest.raises(DirectoryUnavailable):
        d.cached("alice")
    source.fail = None
    clock.now += 2  # the directory is back
    assert asyncio.run(d.membership("alice")).found
    assert metrics.directory_errors.labels("connect")._value.get() == 2


def test_a_user_in_too_many_groups_is_refused_alone(tmp_path: Path) -> None:
    """More groups than `max_groups` is that user's answer (`DirectoryRefused`, a 403), not
    a directory outage: before, it marked the directory down, and for
    `retry_interval_seconds` every user not cached got a 503."""
    d, source, _, metrics = make(tmp_path)
    source.fail_for["huge"] = DirectoryError("too_many", "more than 5000 groups")
    with pytest.raises(DirectoryRefused):
        asyncio.run(d.membership("huge"))
    assert asyncio.run(d.membership("bob")).found  # looked up at once, not refused
    assert source.calls == 2
    with pytest.raises(DirectoryRefused):  # asked again: nothing cached for them
        asyncio.run(d.membership("huge"))
    assert metrics.directory_errors.labels("too_many")._value.get() == 2
    assert count(metrics, "refused") == 0


def test_no_staleness_means_fail_closed_at_once(tmp_path: Path) -> None:
    d, source, clock, _ = make(tmp_path, max_staleness_seconds=0)
    asyncio.run(d.membership("alice"))
    source.fail = DirectoryError("timeout", "slow")
    clock.now += 11
    with pytest.raises(DirectoryUnavailable):
        asyncio.run(d.membership("alice"))


def test_negative_results_are_cached_briefly(tmp_path: Path) -> None:
    d, source, clock, metrics = make(tmp_path)
    missing = asyncio.run(d.membership("nobody"))
    assert not missing.found and not missing.active
    assert d.cached("nobody") is missing and count(metrics, "negative_hit") == 1
    clock.now += 3  # negative TTL is 2 s
    assert d.cached("nobody") is None
    assert source.calls == 1


def test_slow_directory_times_out_without_blocking_the_loop(tmp_path: Path) -> None:
    d, source, _, _ = make(tmp_path, timeout_seconds=0.2, connect_timeout_seconds=0.1)
    source.delay = 2.0

    async def run():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        with pytest.raises(DirectoryUnavailable):
            await d.membership("alice")
        t.cancel()
        return ticks

    assert asyncio.run(run()) >= 20  # the loop kept running during the 0.5 s deadline
    d.close()


def test_flush_file_reaches_every_cache(tmp_path: Path) -> None:
    a, _, clock_a, _ = make(tmp_path)
    b, _, clock_b, _ = make(tmp_path)  # another worker, same flush file
    for d in (a, b):
        asyncio.run(d.membership("alice"))
        asyncio.run(d.membership("bob"))
    request_flush(a.config.flush_file, "Alice")
    for d, clock in ((a, clock_a), (b, clock_b)):
        clock.now += 1.5  # workers look at the file at most once a second
        assert d.cached("alice") is None
        assert d.cached("bob") is not None
    request_flush(a.config.flush_file, None)
    for d, clock in ((a, clock_a), (b, clock_b)):
        clock.now += 1.5
        assert d.cached("bob") is None
    assert (a.config.flush_file.stat().st_mode & 0o777) == 0o600


def test_flush_file_compaction_flushes_everything(tmp_path: Path) -> None:
    d, _, clock, _ = make(tmp_path)
    request_flush(d.config.flush_file, "x")
    asyncio.run(d.membership("bob"))
    for i in range(5000):
        request_flush(d.config.flush_file, f"user-{i}")
    assert d.config.flush_file.stat().st_size < 100_000
    clock.now += 1.5
    assert d.cached("bob") is None


def test_while_unhealthy_stale_is_answered_at_once_and_refreshed_behind(tmp_path: Path) -> None:
    d, source, clock, metrics = make(tmp_path)

    async def scenario() -> None:
        await d.membership("alice")
        source.fail = DirectoryError("timeout", "hangs")
        clock.now += 11
        await d.membership("alice")  # this lookup fails: stale, directory now unhealthy
        assert source.calls == 2
        clock.now += 2  # past the retry interval, still within max staleness
        source.delay = 0.3
        started = asyncio.get_running_loop().time()
        assert d.cached("alice") is not None  # no waiting for the hanging directory
        assert asyncio.get_running_loop().time() - started < 0.05
        assert d.cached("alice") is not None  # one refresh at a time
        await asyncio.sleep(0.5)
        assert source.calls == 3  # the refresh ran (and failed) in the background
        source.fail, source.delay = None, 0.0
        clock.now += 2
        assert d.cached("alice") is not None
        await asyncio.sleep(0.1)
        assert source.calls == 4  # succeeded: healthy again, fresh entry
        assert d.cached("alice") is not None and source.calls == 4

    asyncio.run(scenario())
    assert count(metrics, "stale") >= 3
