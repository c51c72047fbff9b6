"""The kubernetes tenant store, its Lease and the shared credentials, against a real
kube-apiserver with the chart's Tenant CRD (resourceVersions, watches, 409s, MicroTimes).

The stores and credential Secrets run as ServiceAccount `vgate` with exactly the RBAC the
gateway's Helm chart grants it (`store_kubeconfig`); the test's own checks use the admin."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.kube import LightkubeAPI
from gateway.lifecycle.model import Desired, Phase, TenantSpec, TenantStatus
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.helm import HelmProvisioner, HelmSettings
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.route_sync import RouteSync
from gateway.lifecycle.stores.kubernetes import (
    ACTIVITY_GRANULARITY,
    KubernetesTenantStore,
    _micro_datetime,
    tenant_resource,
)
from gateway.lifecycle.stores.protocol import (
    MANAGER_LEASE,
    Conflict,
    StoreError,
    TenantExists,
    TenantNotFound,
)
from gateway.registry import TenantRegistry
from tests.support.kube import ApiServer
from tests.support.lifecycle.fakes import FakeHelm, FakeHost, World, connector
from tests.support.pki import TestCA


class Host:
    """The test's own view of the host cluster (past every store's cache), and the gateway's
    credential there (`kubeconfig`)."""

    def __init__(self, api: ApiServer, namespace: str, kubeconfig: Path) -> None:
        self.api = api
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.client = AsyncClient(config=KubeConfig.from_file(api.kubeconfig), field_manager="test")

    async def tenant(self, name: str) -> dict:
        return (await self.client.get(tenant_resource(), name, namespace=self.namespace)).to_dict()

    async def put_tenant(self, obj: dict) -> None:
        resource = tenant_resource()
        obj["metadata"]["namespace"] = self.namespace
        try:
            await self.client.replace(resource.from_dict(obj))
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            obj["metadata"].pop("resourceVersion", None)
            await self.client.create(resource.from_dict(obj))

    async def lease(self, name: str = "vgate-lifecycle") -> dict:
        return (await self.client.get(Lease, name, namespace=self.namespace)).to_dict()


@pytest.fixture
async def host(tenant_crd, host_namespace, store_kubeconfig):
    view = Host(tenant_crd, host_namespace, store_kubeconfig)
    yield view
    await view.client.close()


def store_on(host: Host) -> KubernetesTenantStore:
    return KubernetesTenantStore(
        namespace=host.namespace, lease_name="vgate-lifecycle", kubeconfig=host.kubeconfig
    )


@pytest.fixture
async def stores(host):
    """Two stores on the same namespace, as two gateway replicas have."""
    opened = [store_on(host) for _ in range(2)]
    yield opened
    for store in opened:
        await store.close()


def gateway_api(host: Host) -> LightkubeAPI:
    """The credential Secrets' client, as `assemble.shared_credentials` makes it."""
    return LightkubeAPI.from_path(host.kubeconfig)


def scripted_provisioner(
    world: World, files: CredentialFiles, shared: CredentialSecrets | None = None
) -> HelmProvisioner:
    """A provisioner whose host cluster and helm are the scripted `world` (the store under
    test is the real one), quick to call a vcluster ready."""
    return HelmProvisioner(
        FakeHost(world),
        FakeHelm(world),
        connector(world),
        files,
        HelmSettings(poll_seconds=0.0, ready_timeout=0.05),
        shared=shared,
    )


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
    live = await host.tenant("t1")
    assert live["spec"]["admin_groups"] == ["admins"] and "name" not in live["spec"]
    assert live["spec"]["quota"] == {"pods": "10"} and live["status"]["phase"] == "Ready"
    notes = live["metadata"]["annotations"]
    assert notes["vgate.io/version"] == "2" and notes["vgate.io/generation"] == "1"
    assert live["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "vgate"}
    # and kubectl shows them with the CRD's printer columns
    row = host.api.kubectl("-n", host.namespace, "get", "tenants").stdout.splitlines()[1]
    assert row.split()[:3] == ["t1", "running", "Ready"] and " 1.32 " in row, row


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
    live = await host.tenant("t1")
    live["metadata"]["annotations"]["vgate.io/version"] = "2"
    live["spec"]["ha"] = 3
    await host.put_tenant(live)
    store._cache["t1"] = store._cache["t1"].__class__(stale[0], stale[1])
    with pytest.raises(Conflict):
        await store.update_status("t1", TenantStatus(step="x"), created.version)
    # the refused write brought the copy up to date: a retry on what get() says succeeds
    current = await store.get("t1")
    assert (current.version, current.spec.ha) == (2, 3)
    with pytest.raises(ApiError) as refused:
        await store._delete_if_unchanged("t1", stale[1])
    assert refused.value.status.code == 409
    assert (await host.tenant("t1"))["spec"]["ha"] == 3


async def test_a_late_watch_event_does_not_roll_the_copy_back(stores, host):
    store, _ = stores
    created = await store.create(spec())
    old = await host.tenant("t1")  # version 1
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
    # valid for the CRD's schema, but without vgate's bookkeeping annotations
    await host.put_tenant(
        {
            "apiVersion": "vgate.io/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "junk"},
            "spec": {"admin_groups": ["x"]},
        }
    )
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


async def test_a_record_that_turns_unreadable_is_dropped_not_kept_stale(stores, host):
    """Changed into something this version cannot read (valid for the CRD, but
    `ha: 2`, which no vgate writes): the other replica drops its copy, as a relist would,
    instead of serving routes from the spec that is no longer stored."""
    writer, reader = stores
    await writer.create(spec())
    await eventually(lambda: reader.fingerprints())
    obj = await host.tenant("t1")
    obj["spec"]["ha"] = 2
    await host.put_tenant(obj)

    async def dropped() -> bool:
        try:
            await reader.get("t1")
        except TenantNotFound:
            return True
        return False

    await eventually(dropped)
    assert await reader.list() == []


async def test_the_crd_refuses_what_vgate_would_never_write(host):
    with pytest.raises(ApiError) as refused:
        await host.put_tenant(
            {
                "apiVersion": "vgate.io/v1alpha1",
                "kind": "Tenant",
                "metadata": {"name": "bad"},
                "spec": {"admin_groups": ["x"], "ha": "many"},
            }
        )
    assert refused.value.status.code == 422
    assert "spec.ha" in refused.value.status.message


async def test_unreachable_configuration_is_a_readable_error(tmp_path):
    store = KubernetesTenantStore(
        namespace="vgate-system", lease_name="l", kubeconfig=tmp_path / "missing-kubeconfig"
    )
    with pytest.raises(StoreError, match="no way to reach the Kubernetes API"):
        await store.list()
    await store.close()


async def test_refusals_from_the_api_server_are_readable_errors(host, tmp_path):
    """A wrong credential (401) and one without RBAC on Tenant objects (403), as a real API
    server answers them: an error naming the cause at once, not a 15 s wait."""
    api = host.api
    api.kubectl("-n", host.namespace, "create", "serviceaccount", "nobody")
    nobody = api.kubectl("-n", host.namespace, "create", "token", "nobody").stdout.strip()
    for token, cause in (
        ("wrong-token", "Unauthorized"),
        (nobody, f"system:serviceaccount:{host.namespace}:nobody.*forbidden|forbidden.*nobody"),
    ):
        (tmp_path / "who.yaml").write_text(api.kubeconfig_text(token))
        store = KubernetesTenantStore(
            namespace=host.namespace, lease_name="l", kubeconfig=tmp_path / "who.yaml"
        )
        started = time.monotonic()
        with pytest.raises(
            StoreError,
            match=rf"cannot read Tenant objects in namespace "
            rf"'{host.namespace}': .*({cause})",
        ):
            await store.list()
        assert time.monotonic() - started < 5
        await store.close()


async def test_lease_one_holder_release_and_takeover_after_observed_expiry(stores, host):
    a, b = stores
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    assert not await b.acquire_lease(MANAGER_LEASE, "pod-b", 1)
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)  # renewal
    lease = await host.lease()
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseDurationSeconds"] == 1
    await a.release_lease(MANAGER_LEASE, "pod-a")
    assert await b.acquire_lease(MANAGER_LEASE, "pod-b", 1)  # released: free at once
    # pod-b dies without releasing: pod-a waits one lease duration of its own clock
    assert not await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    await asyncio.sleep(0.5)
    assert not await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    await asyncio.sleep(0.6)
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 1)
    lease = await host.lease()
    assert lease["spec"]["holderIdentity"] == "pod-a"
    assert lease["spec"]["leaseTransitions"] == 2


async def test_lease_times_written_as_kubernetes_micro_times(stores, host):
    """A Lease whose times have no fraction (what another client may write) renews: the
    times vgate sends back are MicroTimes (6 digits), whatever they were read as."""
    a, _ = stores
    host.api.apply(f"""apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {{name: vgate-lifecycle, namespace: {host.namespace}}}
spec: {{holderIdentity: pod-a, leaseDurationSeconds: 5,
        acquireTime: "2024-01-01T00:00:00.000000Z", renewTime: "2024-01-01T00:00:00.000000Z"}}
""")
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 5)
    lease = await host.lease()
    assert lease["spec"]["holderIdentity"] == "pod-a"
    raw = host.api.kubectl(
        "-n",
        host.namespace,
        "get",
        "lease",
        "vgate-lifecycle",
        "-o",
        "jsonpath={.spec.acquireTime} {.spec.renewTime}",
    ).stdout
    acquired, renewed = raw.split()
    assert acquired.startswith("2024-01-01T00:00:00.00000") and len(acquired) == 27
    assert renewed > "2024-01-02" and len(renewed) == 27
    # a new Lease created on a whole second is a valid MicroTime too
    whole = Lease(
        metadata=ObjectMeta(name="whole-second", namespace=host.namespace),
        spec=LeaseSpec(holderIdentity="x", renewTime=_micro_datetime(1704067200.0)),
    )
    created = await host.client.create(whole)
    assert created.spec.renewTime.timestamp() == pytest.approx(1704067200.0, abs=1e-5)


async def test_released_lease_by_someone_else_is_left_alone(stores, host):
    a, b = stores
    assert await a.acquire_lease(MANAGER_LEASE, "pod-a", 30)
    await b.release_lease(MANAGER_LEASE, "pod-b")  # not the holder: no effect
    assert not await b.acquire_lease(MANAGER_LEASE, "pod-b", 30)


async def test_credentials_mirror_into_each_workers_files(host, tmp_path):
    api = gateway_api(host)
    ns = host.namespace
    manager = CredentialSecrets(api, ns, CredentialFiles(tmp_path / "manager"))
    worker_files = CredentialFiles(tmp_path / "worker")
    worker = CredentialSecrets(api, ns, worker_files)
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
    lease, the other one takes over.

    The store, the Lease and the credential Secrets are the real API server's; the vcluster
    side (`FakeHost`/`FakeHelm`/`connector`) is a stand-in, because a vcluster needs a
    kubelet to run (the helm provisioner's own e2e test drives that part against real
    API servers)."""
    world = World()
    world.ca_pem = TestCA(tmp_path / "ca").cert_file.read_bytes()  # routes load it
    replicas = []
    for name in ("a", "b"):
        files = CredentialFiles(tmp_path / name / "credentials")
        api = gateway_api(host)
        shared = CredentialSecrets(api, host.namespace, files)
        store = store_on(host)
        provisioner = scripted_provisioner(world, files, shared=shared)
        reconciler = Reconciler(
            store, provisioner, backoff=Backoff(base=0.0, cap=0.0, jitter=0.0), poll_seconds=0.02
        )
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

        await eventually(both_route, within=20)
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
        # as `vgate tenant pause` does it: the reconciler may still be writing the status
        # (its pass goes on after the route is registered), so compare-and-swap with retry
        await TenantOperations(store).pause("t1")

        async def paused():
            return (await store.get("t1")).status.phase is Phase.paused

        await eventually(paused, within=20)
        assert replicas[follower][1]._workers
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for store, _, _, _, api in replicas:
            await store.close()
            await api.close()


async def test_writes_the_api_server_does_not_answer_are_store_errors(host, tmp_path):
    """The host API server gone mid-operation (connection refused): create, update and delete
    fail with a `StoreError` saying what failed (the CLI prints it and exits 1, the admin API
    answers a 503 Status), not with the HTTP client's exception (a traceback, a bare 500)."""

    store = store_on(host)
    try:
        record = await store.create(spec("gone"))
        _kubeconfig_on_free_port(host, tmp_path / "down.yaml")  # nothing listens there
        await store.client.close()
        store._client = AsyncClient(config=KubeConfig.from_file(tmp_path / "down.yaml"))
        with pytest.raises(StoreError, match="cannot create Tenant 'other': the API server did"):
            await store.create(spec("other"))
        with pytest.raises(StoreError, match="cannot update Tenant 'gone': the API server did"):
            await store.update_status("gone", TenantStatus(phase=Phase.ready), record.version)
        with pytest.raises(StoreError, match="cannot delete Tenant 'gone': the API server did"):
            await store.delete("gone", record.version)
        assert (await store.get("gone")).version == record.version  # nothing half-written
    finally:
        await store.close()


async def test_a_manager_started_while_the_host_is_down_manages_once_it_is_up(host, tmp_path):
    """The host API server unreachable when the manager starts (a stand-in port that refuses
    connections, then forwards to the real server): the manager keeps trying, and once the
    server answers it takes the Lease and brings the waiting tenant to Ready. It used to end
    at its first failed Lease request and never manage anything."""
    from urllib.parse import urlsplit

    port = _kubeconfig_on_free_port(host, tmp_path / "via-proxy.yaml")
    real = urlsplit(host.api.url)

    async def forward(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(real.hostname, real.port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    world = World()
    files = CredentialFiles(tmp_path / "credentials")
    store = KubernetesTenantStore(
        namespace=host.namespace,
        lease_name="vgate-lifecycle",
        kubeconfig=tmp_path / "via-proxy.yaml",
    )
    provisioner = scripted_provisioner(world, files)
    reconciler = Reconciler(
        store, provisioner, backoff=Backoff(base=0.0, cap=0.0, jitter=0.0), poll_seconds=0.05
    )
    writer = store_on(host)
    run = asyncio.create_task(reconciler.run(lease_ttl=3.0))
    server = None
    try:
        await writer.create(spec())
        await asyncio.sleep(2.0)  # the manager meets a host that is down
        assert not run.done(), run
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        up = time.monotonic()

        async def ready():
            return (await writer.get("t1")).status.phase is Phase.ready

        await eventually(ready, within=30)
        print(f"tenant Ready {time.monotonic() - up:.1f}s after the host came back")
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        if server is not None:
            server.close()
        await store.close()
        await writer.close()


def _kubeconfig_on_free_port(host, path):
    """Write to `path` the host's kubeconfig with its server moved to a free local port
    (nothing listens there until a test does); return that port."""
    import socket

    import yaml

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = yaml.safe_load(host.kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    return port
