"""Store → every worker's registry: routes appear, pause, wake on request, and disappear."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.lifecycle.model import Desired, Phase, RouteInfo, TenantSpec, new_error_reference
from gateway.lifecycle.route_sync import RouteSync
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from gateway.registry import TenantRegistry, TenantState
from tests.support.gateway_thread import GatewayThread


class Manager:
    """Plays the reconciler's part: writes records and routes from the test thread."""

    def __init__(self, path: Path, token_file: Path, port: int) -> None:
        self.store = SQLiteTenantStore(path)
        self.route = RouteInfo(server=f"http://127.0.0.1:{port}", token_file=str(token_file))

    def run(self, coro):
        return asyncio.run(coro)

    def create(self, name: str, *, paused=False, auto_wake=False, admins=("a",)) -> None:
        spec = TenantSpec(
            name=name,
            admin_groups=list(admins),
            desired=Desired.paused if paused else Desired.running,
        )
        record = self.run(self.store.create(spec))
        route = self.route.model_copy(update={"paused": paused, "auto_wake": auto_wake})
        self.run(
            self.store.update_status(
                name, record.status.model_copy(update={"route": route}), record.version
            )
        )

    def set_running(self, name: str) -> None:
        record = self.run(self.store.get(name))
        self.run(
            self.store.update_status(
                name, record.status.model_copy(update={"route": self.route}), record.version
            )
        )

    def delete(self, name: str) -> None:
        record = self.run(self.store.get(name))
        self.run(self.store.delete(name, record.version))

    def progress(
        self,
        name: str,
        phase: Phase,
        step: str | None,
        error: str | None = None,
        failures: int = 0,
        reference: str | None = None,
    ) -> None:
        """The status a reconciler writes while it works on a tenant (no route yet)."""
        record = self.run(self.store.get(name))
        update = {
            "phase": phase,
            "step": step,
            "last_error": error,
            "failures": failures,
            "error_reference": reference,
        }
        self.run(
            self.store.update_status(name, record.status.model_copy(update=update), record.version)
        )


@pytest.fixture
def world(tmp_path, issuer, upstream):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    token = tmp_path / "token"
    token.write_text("upstream-secret\n")
    config = {
        "routing": {"base_domain": "k8s.test", "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "policies": str(tmp_path / "policies"),
        "audit": {"file": str(tmp_path / "audit.log")},
    }
    manager = Manager(tmp_path / "tenants.db", token, upstream.port)
    with GatewayThread(tmp_path, config) as gw:
        sync_store = SQLiteTenantStore(tmp_path / "tenants.db")
        sync = RouteSync(
            sync_store,
            gw.gateway.registry,
            poll_seconds=0.05,
            activity_seconds=0.1,
            on_roles=gw.gateway.policy.set_stored_roles,
        )
        task = asyncio.run_coroutine_threadsafe(sync.run(), gw.loop)
        headers = {"Authorization": f"Bearer {issuer.sign(issuer.claims())}"}
        with httpx.Client(base_url=gw.url, headers=headers, timeout=10) as client:
            yield gw, manager, client
        task.cancel()
        time.sleep(0.1)
    asyncio.run(manager.store.close())


def wait_for(check, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_created_route_serves_and_deleted_route_is_404_promptly(world):
    _gw, manager, client = world
    assert client.get("/clusters/t1/api").status_code == 404
    manager.create("t1")
    assert wait_for(lambda: client.get("/clusters/t1/api").status_code == 200)
    start = time.monotonic()
    manager.delete("t1")
    assert wait_for(lambda: client.get("/clusters/t1/api").status_code == 404)
    assert time.monotonic() - start < 1.0


def test_a_tenant_not_routable_yet_says_its_state_to_its_users(world, issuer):
    """Known to the lifecycle but without a route (being created, failing, being deleted):
    503 with Retry-After and a Status naming phase, step and the last error's reference (its
    text, with the host's paths and names, only in the audit line) — said only to a
    caller with a role there (no token: the 401 of any name; no role: the 403 of a ready
    tenant); a name the store does not know stays 404."""
    gw, manager, client = world
    registry = gw.gateway.registry
    manager.run(manager.store.create(TenantSpec(name="t1", admin_groups=["ops-t1"])))
    manager.progress("t1", Phase.provisioning, "apiserver")
    assert wait_for(lambda: getattr(registry.state("t1"), "step", None) == "apiserver")
    whoami = "/clusters/t1/apis/authentication.k8s.io/v1/selfsubjectreviews"
    r = client.post(whoami, json={})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "5"
    status = r.json()
    assert status["kind"] == "Status" and status["reason"] == "ServiceUnavailable"
    assert status["message"] == (
        'tenant "t1" is not ready yet (Provisioning, step "apiserver"); retry shortly'
    )
    assert status["details"] == {
        "name": "t1",
        "kind": "tenant",
        "retryAfterSeconds": 5,
        "causes": [
            {"type": "TenantPhase", "message": "Provisioning"},
            {"type": "TenantStep", "message": "apiserver"},
        ],
    }
    # the error is the host's: paths, host-cluster names, a command line. Its users learn
    # the phase, the step, how often it failed and a reference, never the text
    error = (
        "apiserver: kube-apiserver of t1 not ready after 60s: [Errno 20] Not a directory: "
        "'/var/lib/vgate/local/tenants/t1/pki' (/usr/local/bin/kube-apiserver "
        "--etcd-servers=https://etcd-0.vgate-system.svc.cluster.local:2379)"
    )
    reference = new_error_reference()
    manager.progress("t1", Phase.provisioning, "apiserver", error, failures=3, reference=reference)
    assert wait_for(lambda: getattr(registry.state("t1"), "failures", 0) == 3)
    r = client.post(whoami, json={})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["message"] == (
        'tenant "t1" is not ready (Provisioning, step "apiserver"; failed 3 times in a row, '
        f"error reference {reference}); the lifecycle manager keeps retrying: ask a platform "
        "administrator if this persists (quote the error reference)"
    )
    assert r.json()["details"]["causes"] == [
        {"type": "TenantPhase", "message": "Provisioning"},
        {"type": "TenantStep", "message": "apiserver"},
        {"type": "TenantErrorReference", "message": reference},
    ]
    for secret in ("/var/lib", "/usr/local", "kube-apiserver", "etcd", "svc.cluster", "Errno"):
        assert secret not in r.text
    discovery = client.get("/clusters/t1/api")  # client-go shows a text body here
    assert discovery.status_code == 503 and discovery.text.startswith('tenant "t1" is not')
    # who learns nothing
    assert httpx.get(f"{gw.url}/clusters/t1/api").status_code == 401
    nobody = {"Authorization": "Bearer " + issuer.sign(issuer.claims(groups=["nobody"]))}
    r = client.get("/clusters/t1/api/v1/pods", headers=nobody)
    assert r.status_code == 403
    assert r.json()["message"] == 'user "alice@example.com" has no access to tenant "t1"'
    assert client.get("/clusters/t9/api/v1/pods").status_code == 404
    # being deleted: the route goes first, the state stays until the record does
    manager.progress("t1", Phase.deleting, "etcd-data-deleted")
    assert wait_for(lambda: getattr(registry.state("t1"), "phase", "") == "Deleting")
    assert client.get("/clusters/t1/api/v1/pods").json()["message"] == (
        'tenant "t1" is being deleted (Deleting, step "etcd-data-deleted")'
    )

    def recorded() -> list[dict]:
        lines = (gw.workdir / "audit.log").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["decision"] == "unavailable"]

    assert wait_for(lambda: any("Deleting" in e["reason"] for e in recorded()))
    # the operators' side: the audit line has the reference and the whole error
    failing = [e["reason"] for e in recorded() if reference in e["reason"]]
    assert failing and error.removeprefix("apiserver: ") in failing[0]
    assert {e["tenant"] for e in recorded()} == {"t1"}
    manager.set_running("t1")  # the route arrives: the same request goes through
    assert wait_for(lambda: client.get("/clusters/t1/api/v1/pods").status_code == 200)


def test_activity_reaches_the_store(world):
    _gw, manager, client = world
    manager.create("t1")
    assert wait_for(lambda: client.get("/clusters/t1/api").status_code == 200)
    before = time.time()
    client.get("/clusters/t1/api/v1/pods")
    assert wait_for(lambda: (manager.run(manager.store.get("t1")).last_activity or 0) >= before)


def test_paused_without_auto_wake_is_503_status(world):
    gw, manager, client = world
    manager.create("t1", paused=True)
    assert wait_for(lambda: gw.gateway.registry.get("t1") is not None)
    r = client.get("/clusters/t1/api/v1/pods")
    assert r.status_code == 503
    assert r.json()["message"] == (
        'tenant "t1" is paused; ask a platform administrator to resume it'
    )
    assert manager.run(manager.store.get("t1")).spec.desired is Desired.paused


def test_auto_wake_holds_the_request_until_the_tenant_runs(world):
    gw, manager, client = world
    manager.create("t1", paused=True, auto_wake=True)
    assert wait_for(lambda: gw.gateway.registry.get("t1") is not None)
    # an unauthenticated request wakes nothing
    assert httpx.get(f"{gw.url}/clusters/t1/api").status_code == 401

    def reconciler():  # sees the resume request, "starts" the cluster after a while
        assert wait_for(
            lambda: manager.run(manager.store.get("t1")).spec.desired is Desired.running, timeout=5
        )
        time.sleep(0.3)
        manager.set_running("t1")

    thread = threading.Thread(target=reconciler)
    thread.start()
    start = time.monotonic()
    responses = []
    threads = [
        threading.Thread(target=lambda: responses.append(client.get("/clusters/t1/api")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    thread.join()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert time.monotonic() - start >= 0.3


def test_auto_wake_gives_up_with_retry_after(world):
    gw, manager, client = world
    gw.gateway.wake_timeout = 0.3
    manager.create("t1", paused=True, auto_wake=True)
    assert wait_for(lambda: gw.gateway.registry.get("t1") is not None)
    r = client.get("/clusters/t1/api/v1/pods")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "10"
    assert r.json()["message"] == 'tenant "t1" is starting; retry shortly'
    assert manager.run(manager.store.get("t1")).spec.desired is Desired.running


def test_a_wake_whose_resume_keeps_failing_says_so_with_the_error_reference(world):
    """The held request of a tenant whose resume fails (its vcluster never gets ready) is
    answered like any tenant whose step failed: the phase, the step, how often and the
    error's reference, `Retry-After: 1`; never the error's text. It used to be told
    "starting; retry shortly" (Retry-After 10) however long the resume had been failing."""
    gw, manager, client = world
    gw.gateway.wake_timeout = 0.3
    manager.create("t1", paused=True, auto_wake=True)
    assert wait_for(lambda: gw.gateway.registry.get("t1") is not None)
    reference = new_error_reference()
    manager.progress(
        "t1",
        Phase.provisioning,
        "ready",
        error="ready: vcluster t1 not ready after 300s (host 10.1.2.3)",
        failures=3,
        reference=reference,
    )
    assert wait_for(lambda: gw.gateway.registry.state("t1") is not None)
    r = client.get("/clusters/t1/api/v1/pods")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["message"].startswith(
        f'tenant "t1" is not ready (Provisioning, step "ready"; failed 3 times in a row, '
        f"error reference {reference})"
    )
    assert {"type": "TenantErrorReference", "message": reference} in r.json()["details"]["causes"]
    assert "10.1.2.3" not in r.text
    assert manager.run(manager.store.get("t1")).spec.desired is Desired.running


def test_a_request_to_wake_a_tenant_being_deleted_is_told_so_and_wakes_nothing(world):
    """Delete races a request that would wake the paused tenant: the delete wins (the spec
    stays `deleted`), and the held request is answered once the route is gone with the 503
    naming the deletion, not "starting; retry shortly" (which sent kubectl back for a tenant
    that is going away)."""
    gw, manager, client = world
    manager.create("t1", paused=True, auto_wake=True)
    assert wait_for(lambda: gw.gateway.registry.get("t1") is not None)
    record = manager.run(manager.store.get("t1"))
    deleted = record.spec.model_copy(update={"desired": Desired.deleted})
    manager.run(manager.store.update_spec("t1", deleted, record.version))

    def reconciler():  # its first delete step: the route goes
        time.sleep(0.3)
        record = manager.run(manager.store.get("t1"))
        status = record.status.model_copy(
            update={"route": None, "phase": Phase.deleting, "step": "helm-release"}
        )
        manager.run(manager.store.update_status("t1", status, record.version))

    thread = threading.Thread(target=reconciler)
    thread.start()
    r = client.get("/clusters/t1/api/v1/pods")
    thread.join()
    assert manager.run(manager.store.get("t1")).spec.desired is Desired.deleted
    assert r.status_code == 503, r.text
    assert "being deleted" in r.json()["message"], r.json()
    assert {"type": "TenantPhase", "message": "Deleting"} in r.json()["details"]["causes"]


def test_stored_admin_groups_grant_cluster_admin(world, issuer, upstream):
    gw, manager, client = world
    outsider = {"Authorization": "Bearer " + issuer.sign(issuer.claims(groups=["ops-t1"]))}
    manager.create("t1", admins=["ops-t1"])
    manager.create("t2")
    assert wait_for(lambda: gw.gateway.registry.get("t2") is not None)
    assert client.get("/clusters/t2/api", headers=outsider).status_code == 403
    r = client.get("/clusters/t1/api", headers=outsider)
    assert r.status_code == 200
    assert b"Impersonate-Group: vgate:cluster-admin" in upstream.heads[-1]
    manager.delete("t1")
    assert wait_for(lambda: client.get("/clusters/t1/api", headers=outsider).status_code == 404)
    assert "t1" not in gw.gateway.policy.tenants_with_rules()


def test_admin_api_is_mounted_on_the_gateway(tmp_path, issuer):
    """The admin API answers under /admin of a gateway with a lifecycle: platform admins
    only, with Kubernetes Status bodies for everyone else. The audit line of each request
    names the user the API authenticated (it named nobody: who created, paused or deleted
    a tenant, or tried to, was in no audit record)."""
    (tmp_path / "policies").mkdir()
    config = {
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {
                    "issuer": issuer.issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "groups_claim": "groups",
                }
            ]
        },
        "policies": str(tmp_path / "policies"),
        "audit": {"file": str(tmp_path / "audit.log")},
        "lifecycle": {
            "store": str(tmp_path / "tenants.db"),
            "provisioner": "local",
            "manage": False,
            "platform_admin_groups": ["platform-admins"],
        },
    }
    manager = Manager(tmp_path / "tenants.db", tmp_path / "token", 1)
    manager.create("t1")
    admin = issuer.sign(
        issuer.claims(sub="root", email="root@example.com", groups=["platform-admins"])
    )
    someone = issuer.sign(issuer.claims(sub="dev", email="dev@example.com", groups=["devs"]))
    with GatewayThread(tmp_path, config) as gw, httpx.Client(base_url=gw.url, timeout=10) as c:
        r = c.get("/admin/tenants")
        assert r.status_code == 401 and r.json()["kind"] == "Status"
        r = c.get("/admin/tenants", headers={"Authorization": f"Bearer {someone}"})
        assert r.status_code == 403 and r.json()["kind"] == "Status"
        r = c.get("/admin/tenants", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        assert "t1" in r.text
        r = c.post("/admin/tenants/t1/pause", headers={"Authorization": f"Bearer {someone}"})
        assert r.status_code == 403
        r = c.post("/admin/tenants/t1/pause", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text

        def audit() -> list[dict]:
            return [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]

        assert wait_for(lambda: len(audit()) == 5)
    who = [(a["method"], a["path"], a["status"], a["user"], a["decision"]) for a in audit()]
    assert who == [
        ("GET", "/admin/tenants", 401, None, "local"),
        ("GET", "/admin/tenants", 403, "dev@example.com", "local"),
        ("GET", "/admin/tenants", 200, "root@example.com", "local"),
        ("POST", "/admin/tenants/t1/pause", 403, "dev@example.com", "local"),
        ("POST", "/admin/tenants/t1/pause", 200, "root@example.com", "local"),
    ]
    assert audit()[-1]["uid"] == "root" and audit()[-1]["issuer"] == issuer.issuer
    asyncio.run(manager.store.close())


class CountingStore(SQLiteTenantStore):
    """Counts the whole records the route sync reads."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.read: list[str] = []

    def _get_many(self, names: list[str]):
        self.read += names
        return super()._get_many(names)

    def _list(self):
        raise AssertionError("the route sync reads changed records only, never the whole store")


async def test_a_change_to_one_tenant_costs_each_worker_that_record_alone(tmp_path: Path) -> None:
    """With thousands of tenants every worker re-read and validated every record on any
    write to the store (activity, a lease renewal, one tenant's status): half a second of CPU
    per worker at 10,000 tenants. Only changed records are read now."""
    token = tmp_path / "t.token"
    token.write_text("x\n")
    writer = SQLiteTenantStore(tmp_path / "t.db")
    route = RouteInfo(server="https://127.0.0.1:6443", token_file=str(token))
    for i in range(50):
        record = await writer.create(TenantSpec(name=f"t{i:02d}", admin_groups=["ops"]))
        await writer.update_status(
            record.name, record.status.model_copy(update={"route": route}), record.version
        )
    store = CountingStore(tmp_path / "t.db")
    registry = TenantRegistry()
    roles: dict = {}
    sync = RouteSync(store, registry, on_roles=lambda n, r: roles.__setitem__(n, r))
    assert await sync.sync_once(force=True)
    assert len(store.read) == 50 and len(registry.names()) == 50 and len(roles) == 50

    store.read.clear()
    await writer.record_activity({"t07": time.time()})
    assert await writer.acquire_lease("lifecycle-manager", "me", 15.0)
    await sync.sync_once()
    assert store.read == []  # the revision moved; no record did

    record = await writer.get("t07")
    failing = record.status.model_copy(
        update={"phase": Phase.provisioning, "step": "etcd", "route": None}
    )
    await writer.update_status("t07", failing, record.version)
    await sync.sync_once()
    assert store.read == ["t07"]
    assert registry.get("t07") is None and registry.state("t07").step == "etcd"

    store.read.clear()
    record = await writer.get("t08")
    await writer.delete("t08", record.version)  # and created again with another admin group
    again = await writer.create(TenantSpec(name="t08", admin_groups=["others"]))
    await writer.update_status(
        "t08", again.status.model_copy(update={"route": route}), again.version
    )
    await writer.delete("t09", (await writer.get("t09")).version)
    await sync.sync_once()
    assert store.read == ["t08"] and roles["t08"]["cluster-admin"] == ["others"]
    assert registry.get("t09") is None and roles["t09"] is None and "t09" not in registry.names()

    store.read.clear()
    await sync.sync_once(force=True)  # the periodic resync: fingerprints only
    assert store.read == []


async def test_a_route_without_its_credential_yet_is_tried_again(tmp_path: Path) -> None:
    token = tmp_path / "late.token"
    writer = SQLiteTenantStore(tmp_path / "t.db")
    record = await writer.create(TenantSpec(name="late", admin_groups=["ops"]))
    route = RouteInfo(server="https://127.0.0.1:6443", token_file=str(token))
    await writer.update_status(
        "late", record.status.model_copy(update={"phase": Phase.ready, "route": route}), 1
    )
    registry = TenantRegistry()
    sync = RouteSync(CountingStore(tmp_path / "t.db"), registry)
    await sync.sync_once(force=True)
    assert registry.get("late") is None  # no token file: not routable yet
    token.write_text("x\n")
    await sync.sync_once(force=True)  # nothing in the store moved; the resync tries again
    assert registry.get("late") is not None


def test_an_error_recorded_without_a_reference_is_still_described():
    """A status written before references were drawn (`last_error`, no reference): users
    learn that it failed and that there is no reference yet; nothing is derived from the
    error's text."""
    error = "apiserver: open /srv/vgate/tenants/t1/pki: permission denied"
    state = TenantState("Provisioning", "apiserver", error, failures=2)
    assert state.message("t1") == (
        'tenant "t1" is not ready (Provisioning, step "apiserver"; failed 2 times in a row, '
        "no error reference recorded yet); the lifecycle manager keeps retrying: ask a "
        "platform administrator if this persists"
    )
    assert state.details("t1")["causes"] == [
        {"type": "TenantPhase", "message": "Provisioning"},
        {"type": "TenantStep", "message": "apiserver"},
    ]
    assert "/srv" not in state.message("t1") and "/srv" in state.describe_for_operators()
