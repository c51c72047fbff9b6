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
