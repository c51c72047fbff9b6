"""The kubernetes tenant store, its Lease and the shared credentials, against the
kube-apiserver stand-in (real HTTP, resourceVersions, watches and 409s)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.connect import connect, token_kubeconfig
from gateway.lifecycle.credential_files import CredentialFiles
from gateway.lifecycle.credential_secrets import CredentialSecrets
from gateway.lifecycle.helm_provisioner import HelmProvisioner, HelmSettings
from gateway.lifecycle.kube_store import ACTIVITY_GRANULARITY, KubernetesTenantStore
from gateway.lifecycle.model import Desired, Phase, TenantSpec, TenantStatus
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.route_sync import RouteSync
from gateway.lifecycle.store import (
    MANAGER_LEASE,
    Conflict,
    StoreError,
    TenantExists,
    TenantNotFound,
)
from gateway.registry import TenantRegistry
from tests.fakekube import Caller, FakeKube
from tests.lifecycle.fakes import FakeHelm, FakeHost, World, connector
from tests.support.pki import TestCA

NS = "vgate-system"


@pytest.fixture
def host():
    kube = FakeKube(name="host", tokens={
        "admin": Caller(user="admin", groups=("system:masters",))}).start()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield kube
    kube.stop()


def client(host: FakeKube) -> AsyncClient:
    return AsyncClient(config=KubeConfig.from_dict(token_kubeconfig(host.url, "admin", None)),
                       field_manager="vgate")


@pytest.fixture
async def stores(host):
    """Two stores on the same namespace, as two gateway replicas have."""
    opened = [KubernetesTenantStore(namespace=NS, lease_name="vgate-lifecycle",
                                    client=client(host)) for _ in range(2)]
    yield opened
    for store in opened:
        await store.close()


def spec(name: str = "t1", **kw) -> TenantSpec:
    return TenantSpec(name=name, admin_groups=["admins"], **kw)


async def eventually(check, within: float = 5.0):
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {check.__name__}")
        await asyncio.sleep(0.02)


async def test_compare_and_swap_contract(stores):
    store, _ = stores
    created = await store.create(spec())
    assert (created.version, created.generation) == (1, 1)
    with pytest.raises(TenantExists, match='tenant "t1" already exists'):
        await store.create(spec())
    updated = await store.update_status("t1", TenantStatus(step="x"), created.version)
    assert (updated.version, updated.generation) == (2, 1)
    with pytest.raises(Conflict):
        await store.update_spec("t1", spec(ha=3), created.version)
    again = await store.update_spec("t1", spec(ha=3), updated.version)
    assert (again.version, again.generation) == (3, 2)
    with pytest.raises(TenantNotFound):
        await store.get("nope")
    with pytest.raises(TenantNotFound):
        await store.update_status("nope", TenantStatus(), 1)
    with pytest.raises(Conflict):
        await store.delete("t1", 2)
    await store.delete("t1", 3)
    assert await store.list() == []


async def test_records_are_tenant_objects_a_person_can_read(stores, host):
    store, _ = stores
    record = await store.create(spec(view_groups=["readers"], quota={"pods": "10"}))
    await store.update_status("t1", TenantStatus(phase=Phase.ready), record.version)
    live = host.get("vgate.io/v1alpha1", "Tenant", "t1", NS)
    assert live["spec"]["admin_groups"] == ["admins"] and "name" not in live["spec"]
    assert live["spec"]["quota"] == {"pods": "10"} and live["status"]["phase"] == "Ready"
    notes = live["metadata"]["annotations"]
    assert notes["vgate.io/version"] == "2" and notes["vgate.io/generation"] == "1"
    assert live["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "vgate"}


async def test_another_replica_sees_every_change_through_its_watch(stores):
    first, second = stores
    before = await second.revision()
    created = await first.create(spec())

    async def seen():
        return await second.revision() != before and await second.list()
    assert [r.name for r in await eventually(seen)] == ["t1"]

    await first.update_status("t1", TenantStatus(step="helm-install"), created.version)

    async def step():
        return (await second.get("t1")).status.step == "helm-install"
    await eventually(step)
    # the second replica's copy is current, so its own compare-and-swap succeeds
    latest = await second.get("t1")
    await second.update_spec("t1", spec(desired=Desired.paused), latest.version)

    async def paused():
        return (await first.get("t1")).spec.desired is Desired.paused
    await eventually(paused)
    await first.delete("t1", (await first.get("t1")).version)

    async def gone():
        return await second.list() == []
    await eventually(gone)


async def test_a_stale_copy_cannot_overwrite_or_delete(stores, host):
    store, _ = stores
    created = await store.create(spec())
    stale = (await store.get("t1"), store._cache["t1"].resource_version)
    # someone else writes between our read and our write (before our watch tells us)
    live = host.get("vgate.io/v1alpha1", "Tenant", "t1", NS)
    live["metadata"]["annotations"]["vgate.io/version"] = "2"
    live["spec"]["ha"] = 3
    host.put(live)
    store._cache["t1"] = store._cache["t1"].__class__(stale[0], stale[1])
    with pytest.raises(Conflict):
        await store.update_status("t1", TenantStatus(step="x"), created.version)
    # the refused write brought the copy up to date: a retry on what get() says succeeds
    current = await store.get("t1")
    assert (current.version, current.spec.ha) == (2, 3)
    with pytest.raises(ApiError) as refused:
        await store._delete_if_unchanged("t1", stale[1])
    assert refused.value.status.code == 409
    assert host.get("vgate.io/v1alpha1", "Tenant", "t1", NS)["spec"]["ha"] == 3


async def test_a_late_watch_event_does_not_roll_the_copy_back(stores, host):
    store, _ = stores
    created = await store.create(spec())
    old = host.get("vgate.io/v1alpha1", "Tenant", "t1", NS)  # version 1
    await store.update_status("t1", TenantStatus(step="newer"), created.version)
    store._apply_event("MODIFIED", old)  # delivered after our write's answer
    assert (await store.get("t1")).status.step == "newer"


async def test_activity_only_moves_forward_and_keeps_the_version(stores):
    store, _ = stores
    await store.create(spec())
    now = time.time()
    await store.record_activity({"t1": now, "ghost": now})
    await store.record_activity({"t1": now - 100})  # older: ignored
    await store.record_activity({"t1": now + ACTIVITY_GRANULARITY / 2})  # too soon to write
    record = await store.get("t1")
    assert record.last_activity == now and record.version == 1
    await store.record_activity({"t1": now + ACTIVITY_GRANULARITY})
    assert (await store.get("t1")).last_activity == now + ACTIVITY_GRANULARITY


async def test_objects_that_are_not_records_are_skipped(stores, host):
    host.put({"apiVersion": "vgate.io/v1alpha1", "kind": "Tenant",
              "metadata": {"name": "junk", "namespace": NS}, "spec": {"ha": "many"}})
    store, _ = stores
    logger = logging.getLogger("vgate.lifecycle.store")
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda rec: seen.append(rec.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # the tenant CLI quietens vgate.lifecycle in-process
    try:
        await store.create(spec())
        assert [r.name for r in await store.list()] == ["t1"]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("'junk' is not a valid vgate record" in line for line in seen), seen


async def test_unreachable_configuration_is_a_readable_error(tmp_path):
    store = KubernetesTenantStore(namespace=NS, lease_name="l",
                                  kubeconfig=tmp_path / "missing-kubeconfig")
    with pytest.raises(StoreError, match="no way to reach the Kubernetes API"):
        await store.list()
    await store.close()


async def test_lease_one_holder_release_and_takeover_after_observed_expiry(stores, host):
    a, b = stores
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    assert not await b.acquire_lease(MANAGER_LEASE, "pod-b", 1)
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)  # renewal
    lease = host.get("coordination.k8s.io/v1", "Lease", "vgate-lifecycle", NS)
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 1
    assert lease["spec"]["renewTime"].endswith("Z")
    await a.release_lease(MANAGER_LEASE, "pod-a")
    assert await b.acquire_lease(MANAGER_LEASE, "pod-b", 1)  # released: free at once
    # pod-b dies without releasing: pod-a waits one lease duration of its own clock
    assert not await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    await asyncio.sleep(0.5)
    assert not await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    await asyncio.sleep(0.6)
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    lease = host.get("coordination.k8s.io/v1", "Lease", "vgate-lifecycle", NS)
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseTransitions"] == 2


async def test_released_lease_by_someone_else_is_left_alone(stores, host):
    a, b = stores
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 30)
    await b.release_lease(MANAGER_LEASE, "pod-b")  # not the holder: no effect
    assert not await b.acquire_lease(MANAGER_LEASE, "pod-b", 30)


async def test_credentials_mirror_into_each_workers_files(host, tmp_path):
    api = await connect(server=host.url, token="admin")
    manager = CredentialSecrets(api, NS, CredentialFiles(tmp_path / "manager"))
    worker_files = CredentialFiles(tmp_path / "worker")
    worker = CredentialSecrets(api, NS, worker_files)
    try:
        await manager.publish("t1", b"token-1", b"CA-1")
        assert await manager.matches("t1", b"token-1", b"CA-1")
        assert not await manager.matches("t1", b"token-2", b"CA-1")
        await worker.mirror()
        assert worker_files.token_path("t1").read_bytes() == b"token-1"
        assert worker_files.ca_path("t1").read_bytes() == b"CA-1"
        assert worker_files.token_path("t1").stat().st_mode & 0o077 == 0
        # unchanged Secret: the file is not rewritten (a newer local token is not clobbered)
        worker_files.write(worker_files.token_path("t1"), b"written-by-the-manager")
        await worker.mirror()
        assert worker_files.token_path("t1").read_bytes() == b"written-by-the-manager"
        await manager.publish("t1", b"token-2", b"CA-1")  # rotation
        await worker.mirror()
        assert worker_files.token_path("t1").read_bytes() == b"token-2"
        await manager.withdraw("t1")
        assert await manager.withdrawn("t1")
        await worker.mirror()
        assert not worker_files.exists("t1")
    finally:
        await api.close()


async def test_two_replicas_one_manages_both_route_and_the_other_takes_over(host, tmp_path):
    """Two gateway replicas on one kubernetes store: exactly one reconciles, both get the
    tenant's route with its credential, and when the manager dies without releasing its
    lease, the other one takes over."""
    world = World()
    world.ca_pem = TestCA(tmp_path / "ca").cert_file.read_bytes()  # routes load it
    replicas = []
    for name in ("a", "b"):
        files = CredentialFiles(tmp_path / name / "credentials")
        api = await connect(server=host.url, token="admin")
        shared = CredentialSecrets(api, NS, files)
        store = KubernetesTenantStore(namespace=NS, lease_name="vgate-lifecycle",
                                      client=client(host))
        provisioner = HelmProvisioner(FakeHost(world), FakeHelm(world), connector(world), files,
                                      HelmSettings(poll_seconds=0.0, ready_timeout=0.05),
                                      shared=shared)
        reconciler = Reconciler(store, provisioner, backoff=Backoff(base=0.0, cap=0.0,
                                                                    jitter=0.0),
                                poll_seconds=0.02)
        registry = TenantRegistry()
        sync = RouteSync(store, registry, poll_seconds=0.02, shared=shared)
        replicas.append((store, reconciler, registry, sync, api))
    tasks = {}
    try:
        for i, (_, reconciler, _, sync, _) in enumerate(replicas):
            tasks[f"run{i}"] = asyncio.create_task(reconciler.run(lease_ttl=1.0))
            tasks[f"sync{i}"] = asyncio.create_task(sync.run())
        await replicas[0][0].create(spec())

        async def both_route():
            return all(r[2].get("t1") is not None for r in replicas)
        await eventually(both_route, within=10)
        managers = [bool(r[1]._workers) for r in replicas]
        assert managers.count(True) == 1
        leader = managers.index(True)
        follower = 1 - leader
        token = (tmp_path / "ab"[follower] / "credentials" / "t1" / "token").read_text()
        assert token in world.clusters["https://t1.vcluster-t1.svc:443"].tokens

        # the manager dies: no release of the lease
        async def no_release(*_args):
            return None
        replicas[leader][0].release_lease = no_release
        tasks.pop(f"run{leader}").cancel()
        store = replicas[follower][0]
        record = await store.get("t1")
        await store.update_spec("t1", spec(desired=Desired.paused), record.version)

        async def paused():
            return (await store.get("t1")).status.phase is Phase.paused
        await eventually(paused, within=10)
        assert replicas[follower][1]._workers
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for store, _, _, _, api in replicas:
            await store.close()
            await api.close()
