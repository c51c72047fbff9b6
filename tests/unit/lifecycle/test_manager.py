"""The long-running manager: one lease holder acts; idle tenants get paused."""

from __future__ import annotations

import asyncio
import time

from gateway.lifecycle.idle import IdlePauser
from gateway.lifecycle.model import Desired, Phase, TenantSpec
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore


async def phase(store, want: Phase, name: str = "t1"):
    """The record once its phase is `want` (within 10 s: two cores shared by many tests)."""
    for _ in range(1000):
        record = await store.get(name)
        if record.status.phase is want:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {want}: {record.status}")


async def test_only_the_lease_holder_reconciles_and_it_follows_spec_changes(setup):
    first, second = setup.reconciler(), setup.reconciler()
    second.store = SQLiteTenantStore(setup.store.path)  # another process's connection
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    runs = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
    try:
        await phase(setup.store, Phase.ready)
        assert bool(first._workers) != bool(second._workers)  # exactly one manages
        record = await setup.store.get("t1")
        await setup.store.update_spec(
            "t1", record.spec.model_copy(update={"desired": Desired.paused}), record.version
        )
        await phase(setup.store, Phase.paused)
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await second.store.close()


async def test_a_spec_change_right_after_a_pass_still_wakes_the_worker(setup):
    """A change committed between the worker's read of the converged record and the start
    of its wait is not missed (it used to sleep until the next resync, 60 s later)."""
    reconciler = setup.reconciler()
    own = SQLiteTenantStore(setup.store.path)  # the manager's own connection
    reconciler.store = own
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    read = own.get
    armed = True

    async def get_then_another_writer_pauses(name: str):
        nonlocal armed
        record = await read(name)
        if armed and record.status.phase is Phase.ready:
            armed = False
            await setup.store.update_spec(
                name, record.spec.model_copy(update={"desired": Desired.paused}), record.version
            )
        return record

    own.get = get_then_another_writer_pauses
    run = asyncio.create_task(reconciler.run())
    try:
        await phase(setup.store, Phase.paused)
        assert not armed
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await own.close()


async def test_a_tenant_this_version_cannot_read_does_not_stop_the_others(setup):
    """The manager leaves a record written by a newer version alone (no crash loop, its
    status untouched) and still brings every other tenant to Ready."""
    import json
    import sqlite3

    await setup.store.create(TenantSpec(name="newer", admin_groups=["a"]))
    with sqlite3.connect(setup.store.path) as db:
        (stored,) = db.execute("SELECT spec FROM tenants WHERE name = 'newer'").fetchone()
        spec = {**json.loads(stored), "deny_groups": ["contractors"]}
        db.execute("UPDATE tenants SET spec = ? WHERE name = 'newer'", (json.dumps(spec),))
        (before,) = db.execute("SELECT status FROM tenants WHERE name = 'newer'").fetchone()
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    reconciler = setup.reconciler()
    run = asyncio.create_task(reconciler.run())
    try:
        await phase(setup.store, Phase.ready)
        await asyncio.sleep(0.1)  # ten polls
        assert set(reconciler._workers) == {"t1"}
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    with sqlite3.connect(setup.store.path) as db:
        (after,) = db.execute("SELECT status FROM tenants WHERE name = 'newer'").fetchone()
    assert after == before


async def test_idle_tenants_are_paused_and_busy_ones_are_not(setup):
    store = setup.store
    for name in ("busy", "idle"):
        await store.create(TenantSpec(name=name, admin_groups=["a"]))
        await setup.reconciler().reconcile(name)
    now = time.time()
    pauser = IdlePauser(store, "me", idle_seconds=60)
    assert await pauser.pause_idle(now + 30) == []
    await store.record_activity({"busy": now + 50})
    assert await pauser.pause_idle(now + 61) == ["idle"]
    assert (await store.get("idle")).spec.desired is Desired.paused
    assert (await store.get("busy")).spec.desired is Desired.running


async def test_the_manager_lists_on_change_not_every_poll_and_sees_its_own_store(setup):
    """A spec change written through the manager's own store connection still wakes the
    tenant's worker, and an idle manager does not re-read every record each poll."""
    reconciler = setup.reconciler()
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    lists = 0
    original = setup.store.list

    async def counting_list():
        nonlocal lists
        lists += 1
        return await original()

    setup.store.list = counting_list
    run = asyncio.create_task(reconciler.run())
    try:
        record = await phase(setup.store, Phase.ready)
        await asyncio.sleep(0.3)  # 30 polls of 10 ms with nothing new
        settled = lists
        await asyncio.sleep(0.3)
        assert lists == settled, "the manager re-listed an unchanged store"
        await setup.store.update_spec(
            "t1", record.spec.model_copy(update={"desired": Desired.paused}), record.version
        )
        await phase(setup.store, Phase.paused)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_the_manager_outlives_a_store_it_cannot_reach_at_start(setup):
    """The host API server down at start (or a 500/429, or the SQLite file locked by another
    process past its busy timeout): acquiring the lease raises. The manager logs it and
    tries again; it used to end there, silently, and never managed anything again."""
    from gateway.lifecycle.stores.protocol import StoreError

    reconciler = setup.reconciler()
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    acquire = setup.store.acquire_lease
    outage = 3

    async def down_at_first(*args, **kw):
        nonlocal outage
        if outage:
            outage -= 1
            raise StoreError("cannot read Lease 'vgate-lifecycle': 500 etcdserver: leader changed")
        return await acquire(*args, **kw)

    setup.store.acquire_lease = down_at_first
    run = asyncio.create_task(reconciler.run(lease_ttl=0.3))
    try:
        await phase(setup.store, Phase.ready)
        assert outage == 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_leader_that_cannot_renew_stops_before_its_lease_runs_out(setup):
    """While renewals fail the leader keeps acting only as long as the lease it last wrote
    holds (another replica may take over after that); then its workers stop, and they start
    again once a renewal succeeds."""
    from gateway.lifecycle.stores.protocol import StoreError

    reconciler = setup.reconciler()
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    acquire = setup.store.acquire_lease
    failing = False

    async def revocable(*args, **kw):
        if failing:
            raise StoreError("cannot update Lease 'vgate-lifecycle': 403 Forbidden")
        return await acquire(*args, **kw)

    setup.store.acquire_lease = revocable
    run = asyncio.create_task(reconciler.run(lease_ttl=0.3))
    try:
        await phase(setup.store, Phase.ready)
        assert reconciler._workers
        failing = True
        await asyncio.sleep(0.6)  # two lease durations without a renewal
        assert not reconciler._workers, "a leader without a lease kept reconciling"
        failing = False
        for _ in range(500):
            if reconciler._workers:
                break
            await asyncio.sleep(0.01)
        assert reconciler._workers
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_a_delete_does_not_wait_for_a_vcluster_that_never_gets_ready(setup):
    """A vcluster that never becomes ready holds its pass in the `ready` step for
    `ready_timeout` (300 s by default); a delete (or pause) asked meanwhile starts at once
    instead of after that wait."""
    from gateway.lifecycle.provisioning.helm import HelmSettings

    setup.settings = HelmSettings(poll_seconds=0.01, ready_timeout=60.0)
    reconciler = setup.reconciler()

    async def never_ready(spec):
        return False

    reconciler.provisioner._ready = never_ready
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    run = asyncio.create_task(reconciler.run())
    try:
        for _ in range(1000):
            record = await setup.store.get("t1")
            if record.status.step == "ready":
                break
            await asyncio.sleep(0.01)
        assert record.status.step == "ready", record.status
        await setup.store.update_spec(
            "t1", record.spec.model_copy(update={"desired": Desired.deleted}), record.version
        )
        asked = time.monotonic()
        while time.monotonic() - asked < 10:
            if not await setup.store.list():
                break
            await asyncio.sleep(0.02)
        assert not await setup.store.list(), "the delete waited for the ready timeout"
        assert not [k for k in setup.world.objects if k[2] == "vcluster-t1"]
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
