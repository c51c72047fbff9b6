"""End to end with the `local` provisioner: real kube-apiservers (one shared etcd) created by
the lifecycle manager, the real IdP, kubectl through the gateway by path and by hostname."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from gateway.lifecycle.model import Desired, Phase
from gateway.lifecycle.operations import TenantOperations
from tests.e2e.conftest import phase, ready_tenants, until
from tests.integration.conftest import host_mode_available

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

def test_two_tenants_pause_wake_upgrade_delete(lab):
    world, store = lab
    ready_tenants(store)
    ops = TenantOperations(store)

    ok = world.kubectl("tenant1", "alice", "get", "namespaces", "-o", "name")
    assert ok.returncode == 0, ok.stderr
    assert b"namespace/kube-system" in ok.stdout
    who = world.kubectl("tenant1", "alice", "auth", "whoami", "-o", "yaml")
    assert b"vgate:cluster-admin" in who.stdout
    denied = world.kubectl("tenant2", "alice", "get", "namespaces")
    assert denied.returncode != 0 and b"Forbidden" in denied.stderr + denied.stdout
    why = host_mode_available()
    if why is None:
        by_host = world.kubectl("tenant1", "alice", "get", "ns", mode="host")
        assert by_host.returncode == 0, by_host.stderr
    else:
        print(f"hostname routing not exercised: {why}")

    # pause: 503 saying so
    asyncio.run(ops.pause("tenant1"))
    until(lambda: phase(store, "tenant1") is Phase.paused, 60, "tenant1 paused")
    paused = world.kubectl("tenant1", "alice", "get", "ns")
    assert paused.returncode != 0 and b"paused" in paused.stderr

    # auto-wake: the request is held while the API server starts, then answered
    record = asyncio.run(store.get("tenant1"))
    asyncio.run(store.update_spec("tenant1", record.spec.model_copy(update={"auto_wake": True}),
                                  record.version))
    until(lambda: asyncio.run(store.get("tenant1")).status.route.auto_wake, 30, "auto-wake")
    time.sleep(0.5)  # every worker's registry has the waking route
    woke = world.kubectl("tenant1", "alice", "get", "ns", "-o", "name", timeout=120)
    assert woke.returncode == 0, woke.stderr
    assert asyncio.run(store.get("tenant1")).spec.desired is Desired.running

    # upgrade to the same version: nothing changes
    before = asyncio.run(store.get("tenant1"))
    after = asyncio.run(ops.upgrade("tenant1", before.spec.k8s_version))
    assert after.version == before.version

    # delete tenant1: 404 at once; tenant2 keeps working
    asyncio.run(ops.delete("tenant1"))
    until(lambda: phase(store, "tenant1") is None, 120, "tenant1 deleted")
    gone = world.kubectl("tenant1", "alice", "get", "ns")
    assert gone.returncode != 0 and b"not found" in gone.stderr
    still = world.kubectl("tenant2", "carol", "get", "ns")
    assert still.returncode == 0, still.stderr
    assert not (world.dir / "local" / "tenants" / "tenant1").exists()
    assert yaml.safe_load(world.kubectl("tenant2", "carol", "get", "ns", "-o", "yaml").stdout)
