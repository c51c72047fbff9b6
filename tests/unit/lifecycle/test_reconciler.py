"""The reconciler and the helm provisioner against the recording fakes."""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
import stat

import pytest

from gateway.lifecycle.credentials.bootstrap import impersonator_rules
from gateway.lifecycle.model import ERROR_REFERENCE, Desired, Phase, TenantSpec, TenantStatus
from gateway.lifecycle.operations import describe
from tests.support.lifecycle.converge import run_until_converged
from tests.support.lifecycle.fakes import Killed

NS = "vcluster-t1"


def spec(name: str = "t1", **kw) -> TenantSpec:
    return TenantSpec(name=name, admin_groups=["CN=admins,DC=corp"], **kw)


async def converge(setup, name="t1"):
    return await run_until_converged(setup.reconciler(), name, within=5.0)


async def set_desired(setup, name, desired, **changes):
    record = await setup.store.get(name)
    new = record.spec.model_copy(update={"desired": desired, **changes})
    await setup.store.update_spec(name, new, record.version)


async def test_create_converges_with_every_object(setup):
    await setup.store.create(spec(quota={"cpu": "10", "pods": "50"}, isolate=True))
    record = await converge(setup)
    assert record.status.phase is Phase.ready
    assert record.status.condition("Ready").status == "True"
    assert record.status.route.server == "https://t1.vcluster-t1.svc:443"
    assert record.status.hostname == "t1.k8s.example.com"
    kinds = {(k[1], k[3]) for k in setup.world.in_namespace(NS)}
    assert {
        ("ResourceQuota", "vgate-quota"),
        ("LimitRange", "vgate-limits"),
        ("NetworkPolicy", "vgate-isolate"),
        ("NetworkPolicy", "vgate-gateway"),
        ("Role", "vgate-tenant-admin"),
        ("RoleBinding", "vgate-tenant-admins"),
        ("StatefulSet", "t1"),
        ("Secret", "vgate-gateway-token"),
    } <= kinds
    ns = setup.world.objects[("v1", "Namespace", "", NS)]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
    role = setup.world.objects[("rbac.authorization.k8s.io/v1", "Role", NS, "vgate-tenant-admin")]
    assert not any("secrets" in r["resources"] or "*" in r["resources"] for r in role["rules"])
    # inside: the impersonator and the role bindings; the token is in a 0600 file
    cluster = setup.world.clusters["https://t1.vcluster-t1.svc:443"]
    crbs = {k[2]: o for k, o in cluster.objects.items() if k[0] == "ClusterRoleBinding"}
    assert crbs["vgate:view"]["roleRef"]["name"] == "view"
    assert crbs["vgate:cluster-admin"]["subjects"][0]["name"] == "vgate:cluster-admin"
    imp = cluster.objects[("ClusterRole", "", "vgate:impersonator")]
    assert imp["rules"] == impersonator_rules()  # what the README's recipe gives too
    token_file = setup.files.token_path("t1")
    assert token_file.read_text() in cluster.tokens
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700


async def test_manager_binds_its_own_tenant_role_first(setup):
    """With the Helm chart's RBAC the manager may read Secrets only in tenant namespaces, via
    a RoleBinding it creates right after the namespace."""
    setup.settings = dataclasses.replace(
        setup.settings,
        manager_cluster_role="vgate-tenant-manager",
        manager_service_account="vgate",
        gateway_namespace="vgate-system",
    )
    await setup.store.create(spec())
    record = await converge(setup)
    assert record.status.phase is Phase.ready
    binding = setup.world.objects[
        ("rbac.authorization.k8s.io/v1", "RoleBinding", NS, "vgate-lifecycle-manager")
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "vgate-tenant-manager",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vgate", "namespace": "vgate-system"}
    ]
    applied = [c for c in setup.world.calls if c.startswith("apply ")]
    assert applied[:2] == [f"apply Namespace/{NS}", "apply RoleBinding/vgate-lifecycle-manager"]


async def test_second_pass_changes_nothing(setup):
    await setup.store.create(spec())
    await converge(setup)
    before = setup.world.mutations
    assert await setup.reconciler().reconcile("t1")
    assert setup.world.mutations == before


async def test_secrets_never_reach_the_store(setup):
    await setup.store.create(spec())
    await converge(setup)
    raw = setup.store.path.read_bytes() + (setup.store.path.parent / "tenants.db-wal").read_bytes()
    token = setup.files.token_path("t1").read_bytes()
    assert token not in raw
    assert b"certificate-authority" not in raw and b"CA-https" not in raw


async def _create_all_steps(setup) -> int:
    await setup.store.create(spec(quota={"pods": "5"}, isolate=True))
    await converge(setup)
    return setup.world.mutations


async def test_kill_at_every_step_then_rerun_converges(setup, tmp_path_factory):
    from gateway.lifecycle.credentials.files import CredentialFiles
    from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
    from tests.support.lifecycle.fakes import World
    from tests.support.lifecycle.fixtures import Setup

    total = await _create_all_steps(setup)
    expected = {k for k in setup.world.snapshot()}
    assert total >= 10
    for kill_at in range(1, total + 1):
        tmp = tmp_path_factory.mktemp(f"kill{kill_at}")
        store = SQLiteTenantStore(tmp / "tenants.db")
        other = Setup(World(), store, CredentialFiles(tmp / "cred"), tmp)
        try:
            await store.create(spec(quota={"pods": "5"}, isolate=True))
            other.world.kill_at = kill_at
            with pytest.raises(Killed):
                await run_until_converged(other.reconciler(), "t1", within=5.0)
            record = await run_until_converged(other.reconciler(), "t1", within=5.0)
            assert record.status.phase is Phase.ready, kill_at
            assert set(other.world.snapshot()) == expected, kill_at
            cluster = next(iter(other.world.clusters.values()))
            assert other.files.token_path("t1").read_text() in cluster.tokens
            assert len(other.world.clusters) == 1
        finally:
            await store.close()


async def test_kill_at_every_delete_step_leaves_nothing(setup, tmp_path_factory):
    from gateway.lifecycle.credentials.files import CredentialFiles
    from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
    from tests.support.lifecycle.fakes import World
    from tests.support.lifecycle.fixtures import Setup

    # measure the delete's mutations once
    await setup.store.create(spec())
    await setup.store.create(spec("t2"))
    await converge(setup)
    await converge(setup, "t2")
    before = setup.world.mutations
    await set_desired(setup, "t1", Desired.deleted)
    await converge(setup)
    steps = setup.world.mutations - before
    assert steps >= 3
    for kill_at in range(1, steps + 1):
        tmp = tmp_path_factory.mktemp(f"del{kill_at}")
        store = SQLiteTenantStore(tmp / "tenants.db")
        other = Setup(World(), store, CredentialFiles(tmp / "cred"), tmp)
        try:
            for name in ("t1", "t2"):
                await store.create(spec(name))
                await run_until_converged(other.reconciler(), name, within=5.0)
            t2_before = {k: v for k, v in other.world.snapshot().items() if NS not in (k[2], k[3])}
            await set_desired(other, "t1", Desired.deleted)
            other.world.kill_at = other.world.mutations + kill_at
            with pytest.raises(Killed):
                await run_until_converged(other.reconciler(), "t1", within=5.0)
            assert await run_until_converged(other.reconciler(), "t1", within=5.0) is None
            assert not other.world.in_namespace(NS)
            assert ("v1", "Namespace", "", NS) not in other.world.objects
            assert not other.files.exists("t1")
            assert [r.name for r in await store.list()] == ["t2"]
            assert other.world.snapshot() == t2_before
        finally:
            await store.close()


async def test_delete_deregisters_route_before_uninstall(setup):
    await setup.store.create(spec())
    await converge(setup)
    await set_desired(setup, "t1", Desired.deleted)
    seen = []
    reconciler = setup.reconciler()
    original = reconciler.provisioner.helm.uninstall

    async def uninstall(release, namespace):
        seen.append((await setup.store.get("t1")).status.route)
        await original(release, namespace)

    reconciler.provisioner.helm.uninstall = uninstall
    assert await run_until_converged(reconciler, "t1", within=5.0) is None
    assert seen == [None]
    calls = setup.world.calls
    start = calls.index("helm uninstall t1")
    assert calls[start:] == [
        "helm uninstall t1",
        "delete PersistentVolumeClaim/data-t1-0",
        "delete Namespace/vcluster-t1",
    ]


async def test_drift_is_repaired_on_the_next_pass(setup):
    await setup.store.create(spec())
    await converge(setup)
    w = setup.world
    del w.objects[("rbac.authorization.k8s.io/v1", "RoleBinding", NS, "vgate-tenant-admins")]
    cluster = w.clusters["https://t1.vcluster-t1.svc:443"]
    del cluster.objects[("ClusterRoleBinding", "", "vgate:admin")]
    setup.files.token_path("t1").unlink()
    assert await setup.reconciler().reconcile("t1")
    assert ("rbac.authorization.k8s.io/v1", "RoleBinding", NS, "vgate-tenant-admins") in w.objects
    assert ("ClusterRoleBinding", "", "vgate:admin") in cluster.objects
    assert setup.files.token_path("t1").read_text() in cluster.tokens


async def test_namespace_deleted_behind_our_back_is_recreated(setup):
    await setup.store.create(spec())
    await converge(setup)
    w = setup.world
    for key in w.in_namespace(NS):
        del w.objects[key]
    del w.objects[("v1", "Namespace", "", NS)]
    w.releases.clear()
    record = await converge(setup)
    assert record.status.phase is Phase.ready
    assert ("apps/v1", "StatefulSet", NS, "t1") in w.objects


async def test_error_sets_condition_and_retries(setup):
    await setup.store.create(spec())
    setup.world.fail["helm upgrade t1"] = RuntimeError("chart repo unreachable")
    reconciler = setup.reconciler()
    assert not await reconciler.reconcile("t1")
    record = await setup.store.get("t1")
    assert record.status.last_error == "vcluster-release: chart repo unreachable"
    assert record.status.failures == 1
    # operators match a user's error reference to the error (`vgate tenant show`)
    shown = describe(record)
    assert shown["last_error"] == "vcluster-release: chart repo unreachable"
    assert re.fullmatch(ERROR_REFERENCE, shown["error_reference"])
    assert shown["error_reference"] == record.status.error_reference
    ready = record.status.condition("Ready")
    assert (ready.status, ready.reason) == ("False", "StepFailed")
    assert record.status.phase is Phase.provisioning  # not a terminal failed state
    assert await reconciler.reconcile("t1")
    record = await setup.store.get("t1")
    assert record.status.last_error is None and record.status.failures == 0
    assert record.status.error_reference is None


def logged_references(caplog, name: str) -> list[str]:
    """The error references of the lifecycle log's failure lines for tenant `name`."""
    return [
        m.group(1)
        for r in caplog.records
        if r.name == "vgate.lifecycle"
        and (m := re.fullmatch(rf"tenant {name}: .* \(error reference (\w+)\)", r.getMessage()))
    ]


async def test_error_reference_is_random_and_names_one_failure_episode(setup, caplog):
    """The reference is drawn at random (the same text in two tenants gets two), kept while
    the step fails with the same error (one id to grep for), and new for another error or
    after a success; the log line carries what the store holds."""
    caplog.set_level(logging.WARNING, logger="vgate.lifecycle")
    await setup.store.create(spec())
    await setup.store.create(spec("t2"))
    reconciler = setup.reconciler()

    async def fail(name: str, error: str) -> TenantStatus:
        setup.world.fail[f"helm upgrade {name}"] = RuntimeError(error)
        assert not await reconciler.reconcile(name)
        status = (await setup.store.get(name)).status
        assert status.last_error == f"vcluster-release: {error}"
        assert re.fullmatch(ERROR_REFERENCE, status.error_reference or "")
        assert logged_references(caplog, name)[-1] == status.error_reference
        return status

    first = await fail("t1", "chart repo unreachable")
    assert (await fail("t2", "chart repo unreachable")).error_reference != first.error_reference
    again = await fail("t1", "chart repo unreachable")
    assert (again.error_reference, again.failures) == (first.error_reference, 2)
    other = await fail("t1", "context deadline exceeded")
    assert other.error_reference != first.error_reference and other.failures == 3
    back = await fail("t1", "chart repo unreachable")  # a new episode, not the first one
    assert back.error_reference not in (first.error_reference, other.error_reference)
    assert await reconciler.reconcile("t1")
    setup.world.releases.clear()  # drift: the release is installed again, and that fails
    after = await fail("t1", "chart repo unreachable")
    assert after.failures == 1
    assert after.error_reference not in (first.error_reference, back.error_reference)
    assert logged_references(caplog, "t1") == [
        first.error_reference,
        first.error_reference,
        other.error_reference,
        back.error_reference,
        after.error_reference,
    ]


async def test_an_error_recorded_without_a_reference_gets_one_at_the_next_failure(setup):
    """A record written before references existed (`last_error`, no `error_reference`) reads
    and shows fine; the next failed pass draws its reference."""
    record = await setup.store.create(spec())
    error = "vcluster-release: chart repo unreachable"
    old = TenantStatus(phase=Phase.provisioning, step="vcluster-release", last_error=error)
    await setup.store.update_status("t1", old.model_copy(update={"failures": 4}), record.version)
    record = await setup.store.get("t1")
    assert record.status.last_error == error and record.status.error_reference is None
    assert describe(record)["error_reference"] is None
    setup.world.fail["helm upgrade t1"] = RuntimeError("chart repo unreachable")
    assert not await setup.reconciler().reconcile("t1")
    status = (await setup.store.get("t1")).status
    assert status.failures == 5 and re.fullmatch(ERROR_REFERENCE, status.error_reference or "")


async def test_foreign_namespace_is_never_adopted(setup):
    setup.world.objects[("v1", "Namespace", "", NS)] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NS, "labels": {}},
    }
    await setup.store.create(spec())
    assert not await setup.reconciler().reconcile("t1")
    record = await setup.store.get("t1")
    assert "not managed by vgate" in record.status.last_error
    # refused by a step's check, before any step ran: still named (not "Pending")
    assert (record.status.phase, record.status.step) == (Phase.provisioning, "namespace")
    await set_desired(setup, "t1", Desired.deleted)
    assert await setup.reconciler().reconcile("t1")
    assert ("v1", "Namespace", "", NS) in setup.world.objects  # left alone


async def test_pause_and_resume_use_the_vcluster_cli_annotations(setup):
    await setup.store.create(spec())
    await converge(setup)
    w = setup.world
    w.objects[("v1", "Pod", NS, "web-x-default-vcluster")] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-x-default-vcluster",
            "namespace": NS,
            "labels": {"vcluster.loft.sh/managed-by": "t1"},
        },
    }
    await set_desired(setup, "t1", Desired.paused)
    record = await converge(setup)
    assert record.status.phase is Phase.paused
    assert record.status.route.paused
    sts = w.objects[("apps/v1", "StatefulSet", NS, "t1")]
    assert sts["metadata"]["annotations"] == {
        "loft.sh/paused": "true",
        "loft.sh/paused-replicas": "1",
    }
    assert sts["spec"]["replicas"] == 0
    assert ("v1", "Pod", NS, "web-x-default-vcluster") not in w.objects
    await set_desired(setup, "t1", Desired.running)
    record = await converge(setup)
    assert record.status.phase is Phase.ready and not record.status.route.paused
    sts = w.objects[("apps/v1", "StatefulSet", NS, "t1")]
    assert sts["spec"]["replicas"] == 1 and not sts["metadata"]["annotations"]


async def test_resume_after_vcluster_cli_pause(setup):
    """`vcluster pause` done by hand is undone by vgate on the next pass (and vice versa)."""
    await setup.store.create(spec())
    await converge(setup)
    sts = setup.world.objects[("apps/v1", "StatefulSet", NS, "t1")]
    sts["metadata"]["annotations"] = {"loft.sh/paused": "true", "loft.sh/paused-replicas": "1"}
    sts["spec"]["replicas"] = 0
    await setup.reconciler().reconcile("t1")
    live = setup.world.objects[("apps/v1", "StatefulSet", NS, "t1")]
    assert live["spec"]["replicas"] == 1
    assert "loft.sh/paused" not in live["metadata"]["annotations"]


async def test_upgrade_changes_the_image_tag_and_is_a_noop_when_equal(setup):
    await setup.store.create(spec(k8s_version="1.31"))
    await converge(setup)
    helm_values = setup.world.releases[(NS, "t1")]["values"]
    assert helm_values["controlPlane"]["distro"]["k8s"]["image"]["tag"].startswith("v1.31.")
    before = setup.world.mutations
    await set_desired(setup, "t1", Desired.running, k8s_version="1.31")
    await converge(setup)
    assert setup.world.mutations == before
    await set_desired(setup, "t1", Desired.running, k8s_version="1.32")
    record = await converge(setup)
    assert record.status.k8s_version == "v1.32.5"  # what the upgraded cluster reports
    helm_values = setup.world.releases[(NS, "t1")]["values"]
    assert helm_values["controlPlane"]["distro"]["k8s"]["image"]["tag"].startswith("v1.32.")


async def test_token_is_rotated_by_the_gateway_itself_before_expiry(setup):
    await setup.store.create(spec())
    await converge(setup)
    cluster = setup.world.clusters["https://t1.vcluster-t1.svc:443"]
    admin_logins, token_logins = cluster.admin_logins, cluster.token_logins
    old = setup.files.token_path("t1").read_text()
    # age the token past the rotation point (less than half its life left)
    secret = setup.world.objects[("v1", "Secret", NS, "vgate-gateway-token")]
    expiry = float(base64.b64decode(secret["data"]["expiry"])) - 2000
    secret["data"]["expiry"] = base64.b64encode(str(expiry).encode()).decode()
    assert await setup.reconciler().reconcile("t1")
    new = setup.files.token_path("t1").read_text()
    assert new != old and new in cluster.tokens
    # minting with the old token, then the version check with the new one
    assert cluster.token_logins == token_logins + 1 + 1
    # only the rbac check used the admin credential; minting did not
    assert cluster.admin_logins == admin_logins + 1


async def test_a_token_the_tenant_no_longer_accepts_is_replaced_at_once(setup):
    """Behind the manager's back the gateway's ServiceAccount is deleted inside the tenant
    (its admins are cluster-admin there) or the vcluster loses its data: the saved token,
    still fresh by its expiry, is refused (401). The next pass mints a new one with the admin
    credential; it used to keep the dead token until half its life had passed (30 min by
    default), every request through the gateway answered 401 by the tenant meanwhile."""
    await setup.store.create(spec())
    await converge(setup)
    cluster = setup.world.clusters["https://t1.vcluster-t1.svc:443"]
    old = setup.files.token_path("t1").read_text()
    del cluster.objects[("ServiceAccount", "vgate-system", "vgate-gateway")]
    cluster.tokens.clear()  # deleting a ServiceAccount invalidates its tokens
    assert await setup.reconciler().reconcile("t1")
    new = setup.files.token_path("t1").read_text()
    assert new != old and new in cluster.tokens
    record = await setup.store.get("t1")
    assert record.status.phase is Phase.ready and record.status.last_error is None


async def test_ha_deploys_etcd(setup):
    await setup.store.create(spec(ha=3))
    await converge(setup)
    values = setup.world.releases[(NS, "t1")]["values"]["controlPlane"]
    assert values["statefulSet"]["highAvailability"]["replicas"] == 3
    assert values["backingStore"]["etcd"]["deploy"]["enabled"] is True


async def test_a_new_ca_reaches_the_files_and_the_route(setup):
    await setup.store.create(spec())
    first = (await converge(setup)).status.route
    secret = setup.world.objects[("v1", "Secret", NS, "vc-t1")]
    secret["data"]["certificate-authority"] = base64.b64encode(b"NEW-CA").decode()
    assert await setup.reconciler().reconcile("t1")
    route = (await setup.store.get("t1")).status.route
    assert setup.files.ca_path("t1").read_bytes() == b"NEW-CA"
    assert route.ca_sha256 != first.ca_sha256 and route.ca_sha256 is not None


async def test_kill_at_every_pause_and_resume_step(setup, tmp_path_factory):
    from gateway.lifecycle.credentials.files import CredentialFiles
    from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
    from tests.support.lifecycle.fakes import World
    from tests.support.lifecycle.fixtures import Setup

    def pod(world):
        world.objects[("v1", "Pod", NS, "app-x-default-t1")] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "app-x-default-t1",
                "namespace": NS,
                "labels": {"vcluster.loft.sh/managed-by": "t1"},
            },
        }

    await setup.store.create(spec())
    await converge(setup)
    pod(setup.world)
    before = setup.world.mutations
    await set_desired(setup, "t1", Desired.paused)
    await converge(setup)
    pause_steps = setup.world.mutations - before
    before = setup.world.mutations
    await set_desired(setup, "t1", Desired.running)
    await converge(setup)
    resume_steps = setup.world.mutations - before
    assert pause_steps >= 2 and resume_steps >= 1
    for phase, desired, steps in (
        (Phase.paused, Desired.paused, pause_steps),
        (Phase.ready, Desired.running, resume_steps),
    ):
        for kill_at in range(1, steps + 1):
            tmp = tmp_path_factory.mktemp(f"{desired.value}{kill_at}")
            store = SQLiteTenantStore(tmp / "tenants.db")
            other = Setup(World(), store, CredentialFiles(tmp / "cred"), tmp)
            try:
                await store.create(spec())
                await run_until_converged(other.reconciler(), "t1", within=5.0)
                pod(other.world)
                if desired is Desired.running:
                    await set_desired(other, "t1", Desired.paused)
                    await run_until_converged(other.reconciler(), "t1", within=5.0)
                await set_desired(other, "t1", desired)
                other.world.kill_at = other.world.mutations + kill_at
                with pytest.raises(Killed):
                    await run_until_converged(other.reconciler(), "t1", within=5.0)
                record = await run_until_converged(other.reconciler(), "t1", within=5.0)
                assert record.status.phase is phase, (desired, kill_at)
                sts = other.world.objects[("apps/v1", "StatefulSet", NS, "t1")]
                notes = sts["metadata"].get("annotations") or {}
                if desired is Desired.paused:
                    assert sts["spec"]["replicas"] == 0
                    assert notes == {"loft.sh/paused": "true", "loft.sh/paused-replicas": "1"}
                    assert record.status.route.paused
                else:
                    assert sts["spec"]["replicas"] == 1 and not notes
                    assert not record.status.route.paused
            finally:
                await store.close()
