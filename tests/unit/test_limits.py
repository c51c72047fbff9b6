"""Rate and concurrency limits: the shared bucket table, the limiter's levels and roles, and
the limit step through a real gateway (429 + Retry-After + a `Status` client-go reads,
metrics by tenant and reason, the audit line, open streams released when they end)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import generate_latest

from gateway.config.model import GatewayConfig, Limit, RateLimits
from gateway.identity import Grant
from gateway.limits import Limiter, Refusal, limit_table
from gateway.limits.limiter import most_generous
from gateway.limits.table import GROUP, BucketTable, key_hash
from gateway.serve import build_pipeline
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, crafted_config
from tests.support.scripted import ScriptedUpstream


def grant(
    user: str = "oidc:alice", tenant: str = "t1", roles: tuple[str, ...] = ("view",)
) -> Grant:
    return Grant(
        tenant=tenant,
        user=user,
        uid="u",
        groups=tuple(f"vgate:{r}" for r in roles),
        roles=roles,
        extra=(),
    )


# -- the table ---------------------------------------------------------------------------


def test_bucket_gives_the_burst_then_refills_at_the_rate() -> None:
    table = BucketTable(256)
    h, now = key_hash("user", "t1", "alice"), 1000.0
    assert [table.take(h, 10.0, 3, now) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = table.take(h, 10.0, 3, now)
    assert wait == pytest.approx(0.1)
    assert table.take(h, 10.0, 3, now + 0.05) == pytest.approx(0.05)  # half a token back
    assert table.take(h, 10.0, 3, now + 0.2) == 0.0
    assert table.take(h, 10.0, 3, now + 100) == 0.0  # never more than the burst
    assert [table.take(h, 10.0, 3, now + 100) for _ in range(3)][-1] > 0


def test_give_back_returns_a_token() -> None:
    table = BucketTable(256)
    h = key_hash("k")
    assert table.take(h, 1.0, 1, 5.0) == 0.0
    assert table.take(h, 1.0, 1, 5.0) > 0
    table.give_back(h, 1)
    assert table.take(h, 1.0, 1, 5.0) == 0.0


def test_streams_are_counted_until_closed() -> None:
    table = BucketTable(256)
    h = key_hash("user", "t1", "bob")
    slots = [table.open_stream(h, 2, 1.0) for _ in range(3)]
    assert slots[0] >= 0 and slots[1] == slots[0] and slots[2] == -2
    table.close_stream(h, slots[0], 2.0)
    assert table.open_stream(h, 2, 3.0) == slots[0]


def test_idle_keys_give_their_slots_up_and_memory_stays_bounded() -> None:
    table = BucketTable(GROUP, idle_seconds=10)  # one group: eight slots for every key
    for i in range(GROUP):
        assert table.take(key_hash("user", str(i)), 1.0, 1, 0.0) == 0.0
    # a ninth key takes over the least recently used slot (that key starts full again)
    assert table.take(key_hash("user", "late"), 1.0, 1, 1.0) == 0.0
    assert table.take(key_hash("user", "0"), 1.0, 1, 1.5) == 0.0
    # after idle_seconds every old slot is free again
    for i in range(GROUP):
        assert table.take(key_hash("user", "new", str(i)), 1.0, 1, 50.0) == 0.0


def test_a_group_full_of_open_streams_does_not_limit_a_new_key() -> None:
    bypassed: list[str] = []
    table = BucketTable(GROUP, on_bypass=bypassed.append)
    for i in range(GROUP):
        assert table.open_stream(key_hash("s", str(i)), 5, 0.0) >= 0
    assert table.take(key_hash("other"), 1.0, 1, 0.0) == 0.0
    assert table.take(key_hash("other"), 1.0, 1, 0.0) == 0.0  # not counted: not limited
    assert bypassed == ["full", "full"]


def test_workers_share_one_bucket_across_fork() -> None:
    """Two processes (forked like `vgate serve` workers) draw from the same bucket: the
    burst is spent once in total, not once per process."""
    table = BucketTable(256, workers=2)
    h = key_hash("tenant", "shared")
    now = time.monotonic()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        table.start_worker(1)
        allowed = sum(table.take(h, 0.001, 10, now) == 0.0 for _ in range(7))
        os.write(write, bytes([allowed]))
        os._exit(0)
    os.waitpid(pid, 0)
    child_allowed = os.read(read, 1)[0]
    table.start_worker(0)
    mine = sum(table.take(h, 0.001, 10, now) == 0.0 for _ in range(7))
    assert (child_allowed, mine) == (7, 3)


def test_a_restarted_worker_starts_with_no_open_streams() -> None:
    table = BucketTable(256, workers=2)
    h = key_hash("user", "t", "carol")
    table.start_worker(1)
    assert table.open_stream(h, 1, 0.0) >= 0
    table.start_worker(0)
    assert table.open_stream(h, 1, 0.0) == -2  # worker 1's stream counts for everyone
    table.start_worker(1)  # worker 1 restarted: its streams ended with the old process
    table.start_worker(0)
    assert table.open_stream(h, 1, 0.0) >= 0


# -- the limiter -------------------------------------------------------------------------


def test_unconfigured_limits_make_no_table_and_no_step(tmp_path: Path) -> None:
    assert limit_table(RateLimits(), 4) is None
    (tmp_path / "p").mkdir()
    config = GatewayConfig.model_validate(
        {
            "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["v"]}]},
            "policies": str(tmp_path / "p"),
        }
    )
    pipeline = build_pipeline(config)
    assert pipeline.limiter is None
    assert pipeline.limit not in pipeline.steps
    limited = build_pipeline(
        config.model_copy(
            update={"rate_limits": RateLimits.model_validate({"user": {"requests_per_second": 5}})}
        )
    )
    names = [s.__name__ for s in limited.steps]
    assert names.index("limit") == names.index("authorize") + 1


def test_config_reads_global_and_checks_burst() -> None:
    limits = RateLimits.model_validate(
        {"global": {"requests_per_second": 100}, "tenant": {"concurrent_streams": 50}}
    )
    assert limits.global_.requests_per_second == 100 and limits.global_.bucket == 200
    assert limits.configured
    with pytest.raises(ValueError, match="burst needs requests_per_second"):
        Limit(burst=3)


def test_roles_get_their_own_user_limit_the_most_generous_wins() -> None:
    config = RateLimits.model_validate(
        {
            "user": {"requests_per_second": 5, "concurrent_streams": 10},
            "roles": {
                "cluster-admin": {"requests_per_second": 50, "burst": 60},
                "view": {"requests_per_second": 2},
            },
            "tenants": {
                "t2": {
                    "user": {"requests_per_second": 1},
                    "roles": {"view": {"requests_per_second": 3}},
                }
            },
        }
    )
    limiter = Limiter(config, BucketTable(256))
    (user,) = limiter.plan(grant(roles=("cluster-admin", "view")))
    assert (user.rate, user.burst, user.streams) == (50, 60, None)  # admin has no stream cap
    (user,) = limiter.plan(grant(roles=("edit",)))
    assert (user.rate, user.streams) == (5, 10)
    (user,) = limiter.plan(grant(tenant="t2", roles=("view",)))
    assert user.rate == 3
    (user,) = limiter.plan(grant(tenant="t2", roles=()))
    assert user.rate == 1
    assert most_generous([Limit(requests_per_second=1), Limit()]).unlimited


def test_a_user_over_their_limit_spends_nothing_of_the_tenant() -> None:
    config = RateLimits.model_validate(
        {
            "user": {"requests_per_second": 1, "burst": 2},
            "tenant": {"requests_per_second": 1, "burst": 3},
        }
    )
    now = [100.0]
    limiter = Limiter(config, BucketTable(256), clock=lambda: now[0])
    alice, bob = grant("alice"), grant("bob")
    assert limiter.admit(alice, False) is None
    assert limiter.admit(alice, False) is None
    refused = limiter.admit(alice, False)
    assert isinstance(refused, Refusal) and refused.reason == "user_rate"
    assert 'user "alice" on tenant "t1"' in refused.message and refused.retry_after == 1
    # the tenant still has one token left for bob; then the tenant is the limit, and bob's
    # own token is given back (his next request after the tenant refills goes through)
    assert limiter.admit(bob, False) is None
    refused = limiter.admit(bob, False)
    assert isinstance(refused, Refusal) and refused.reason == "tenant_rate"
    now[0] += 1.0
    assert limiter.admit(bob, False) is None


def test_streams_are_held_per_level_and_released() -> None:
    config = RateLimits.model_validate(
        {"user": {"concurrent_streams": 1}, "tenant": {"concurrent_streams": 2}}
    )
    limiter = Limiter(config, BucketTable(256))
    first = limiter.admit(grant("alice"), True)
    assert isinstance(first, tuple) and len(first) == 2
    assert limiter.admit(grant("alice"), False) is None  # short requests need no slot
    refused = limiter.admit(grant("alice"), True)
    assert isinstance(refused, Refusal) and refused.reason == "user_streams"
    second = limiter.admit(grant("bob"), True)
    assert isinstance(second, tuple)
    refused = limiter.admit(grant("carol"), True)
    assert isinstance(refused, Refusal) and refused.reason == "tenant_streams"
    limiter.release(first)
    assert isinstance(limiter.admit(grant("carol"), True), tuple)


# -- through a gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("limits")
    config = crafted_config(
        d,
        issuer.issuer,
        upstream.port,
        ("busy", "calm", "streams"),
        {
            "all.yaml": {
                "tenant": "*",
                "roles": {
                    "view": {"groups": ["developers"]},
                    "cluster-admin": {"groups": ["admins"]},
                },
            }
        },
        rate_limits={
            "user": {"requests_per_second": 0.5, "burst": 3, "concurrent_streams": 1},
            "roles": {"cluster-admin": {"requests_per_second": 1000}},
            "tenants": {
                "calm": {"user": {"requests_per_second": 1000}},
                "streams": {"user": {"concurrent_streams": 1}},
            },
        },
    )
    with GatewayThread(d, config) as gw:
        yield gw


def _audit(gateway: GatewayThread) -> list[dict]:
    time.sleep(0.4)  # the audit log is flushed every 0.2 s
    path = Path(gateway.config.audit.file)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_429_carries_retry_after_and_a_status_client_go_reads(
    gateway: GatewayThread, issuer: CraftingIssuer
) -> None:
    token = issuer.sign(issuer.claims(email="flood@example.com"))
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}) as c:
        codes = [c.get("/clusters/busy/api/v1/pods").status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.get("/clusters/busy/api/v1/pods")
        # the same user on a tenant with a higher per-user limit is not affected
        assert c.get("/clusters/calm/api/v1/pods").status_code == 200
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"  # one token at 0.5/s
    status = r.json()
    assert status["kind"] == "Status" and status["reason"] == "TooManyRequests"
    assert status["code"] == 429 and status["details"] == {"retryAfterSeconds": 2}
    assert 'user "flood@example.com" on tenant "busy"' in status["message"]
    metrics = generate_latest(gateway.gateway.recorder.metrics.registry).decode()
    assert 'vgate_rate_limited_total{reason="user_rate",tenant="busy"} 3.0' in metrics
    line = next(e for e in _audit(gateway) if e["request_id"] == r.headers["audit-id"])
    assert line["decision"] == "limited" and line["status"] == 429
    assert line["reason"].startswith("rate limit: user") and line["user"] == "flood@example.com"


def test_a_role_with_more_room_is_not_limited(
    gateway: GatewayThread, issuer: CraftingIssuer
) -> None:
    token = issuer.sign(issuer.claims(email="admin@example.com", groups=["admins"]))
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert {c.get("/clusters/busy/api/v1/pods").status_code for _ in range(20)} == {200}


def test_open_streams_are_limited_and_released_when_they_end(
    gateway: GatewayThread, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> None:
    async def watch(head: bytes, reader, writer) -> bool:
        if b"watch=true" not in head:
            return await upstream.default(head, reader, writer)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
        )
        await writer.drain()
        await reader.read()  # until the gateway cancels it
        return False

    upstream.handler = watch
    token = issuer.sign(issuer.claims(email="watcher@example.com"))
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{gateway.url}/clusters/streams/api/v1/pods?watch=true"
    try:
        with httpx.Client(headers=headers, timeout=5) as c, c.stream("GET", url) as first:
            assert first.status_code == 200
            second = c.get(url)
            assert second.status_code == 429
            assert second.json()["reason"] == "TooManyRequests"
            assert "may keep 1 watches" in second.json()["message"]
            assert second.headers["retry-after"] == "5"
        deadline = time.monotonic() + 5
        while True:  # the first watch ended with its client: its slot is free again
            with httpx.Client(headers=headers, timeout=5) as c, c.stream("GET", url) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the ended watch still holds its slot"
            time.sleep(0.1)
    finally:
        upstream.handler = upstream.default


def test_held_streams_are_released_when_a_later_step_refuses(
    gateway: GatewayThread, issuer: CraftingIssuer
) -> None:
    """The limit step counts the watch, the nested-impersonation step then refuses it:
    recording the exchange gives the slot back."""
    token = issuer.sign(issuer.claims(email="as@example.com"))
    url = f"{gateway.url}/clusters/streams/api/v1/pods?watch=true"
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=5) as c:
        for _ in range(3):
            r = c.get(url, headers={"Impersonate-User": "someone"})
            assert r.status_code == 403, r.text


def _connections_by_pid(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to `port` each process holds (from /proc)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes[fields[9]] = 0
    held: dict[int, int] = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(fds / fd) for fd in os.listdir(fds)]
        held[pid] = sum(1 for link in links if link[8:-1] in inodes)
    return held


@pytest.mark.slow
def test_a_limit_holds_across_worker_processes(
    tmp_path: Path, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> None:
    """`vgate serve` with `workers: 2`: the connections land on both workers, and the
    tenant's burst is spent once between them (the table is shared), not once each."""
    import re

    from tests.support.served import ServedGateway

    burst = 20
    config = crafted_config(
        tmp_path,
        issuer.issuer,
        upstream.port,
        ("t",),
        {"all.yaml": {"tenant": "*", "roles": {"view": {"groups": ["developers"]}}}},
        listen={"host": "127.0.0.1", "port": 0},
        workers=2,
        rate_limits={"tenant": {"requests_per_second": 0.5, "burst": burst}},
    )
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(config))
    token = issuer.sign(issuer.claims())
    with ServedGateway(tmp_path / "vgate.yaml", workers=2) as served:
        pids = sorted({int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(served.lines))})
        clients = [
            httpx.Client(
                base_url=f"http://127.0.0.1:{served.port}",
                headers={"Authorization": f"Bearer {token}"},
            )
            for _ in range(60)
        ]
        try:
            started = time.monotonic()
            codes = [c.get("/clusters/t/api").status_code for c in clients]
            elapsed = time.monotonic() - started
            spread = _connections_by_pid(pids, served.port)
        finally:
            for c in clients:
                c.close()
    # unshared, each worker would allow its own burst: more than `burst` + 1 in total
    # unless a worker got at most one connection
    assert len(pids) == 2 and min(spread.values()) >= 2, f"connections per worker: {spread}"
    assert set(codes) == {200, 429}
    # the burst, plus what the bucket refilled meanwhile (0.5/s), once for both workers
    assert burst <= codes.count(200) <= burst + 1 + elapsed * 0.5, (codes.count(200), spread)
