"""End to end with the `local` provisioner: real kube-apiservers (one shared etcd) created by
the lifecycle manager, the real IdP, kubectl through the gateway by path and by hostname."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from gateway.lifecycle.assemble import DEFAULT_ASSETS
from gateway.lifecycle.local_process import stop as stop_process
from gateway.lifecycle.model import Desired, Phase, TenantSpec
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.runtime import LifecycleRuntime
from gateway.lifecycle.sqlite_store import SQLiteTenantStore
from tests.integration.conftest import BASE_DOMAIN, KUBECTL, World, host_mode_available
from tests.support.gateway_thread import GatewayThread
from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ASSETS = Path(os.environ.get("KUBEBUILDER_ASSETS") or DEFAULT_ASSETS)
USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["tenant1-admins"]},
    "carol": {"email": "carol@example.com", "name": "Carol", "groups": ["tenant2-admins"]},
}


def _require() -> None:
    missing = [b for b in ("kube-apiserver", "etcd") if not (ASSETS / b).is_file()]
    if missing:
        pytest.skip(f"e2e needs {' and '.join(missing)} in {ASSETS} "
                    "(set $KUBEBUILDER_ASSETS, e.g. from setup-envtest)")
    if not Path(KUBECTL).exists() or shutil.which("node") is None:
        pytest.skip("e2e needs kubectl and node (for the OpenID Provider)")


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require()
    base = tmp_path_factory.mktemp("lifecycle-e2e")
    ca = TestCA(base / "pki")
    leaf = ca.issue("gateway", ["127.0.0.1", "localhost", BASE_DOMAIN, f"*.{BASE_DOMAIN}"])
    idp = OIDCProvider(base / "idp", users=USERS).start()
    (base / "policies").mkdir()
    (base / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
        f"127.0.0.1 {t}.{BASE_DOMAIN}\n" for t in ("tenant1", "tenant2")))
    config = {
        "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
        "routing": {"base_domain": BASE_DOMAIN, "path_prefix": "/clusters"},
        "oidc": {"issuers": [{"issuer": idp.issuer, "audiences": ["vgate"],
                              "username_claim": "email", "username_prefix": "oidc:",
                              "groups_claim": "groups", "groups_prefix": "oidc:"}]},
        "policies": str(base / "policies"),
        "audit": {"file": str(base / "audit.log")},
        "lifecycle": {"provisioner": "local", "store": str(base / "tenants.db"),
                      "credentials_dir": str(base / "credentials"), "poll_seconds": 0.1,
                      "wake_timeout_seconds": 90,
                      "local": {"assets_dir": str(ASSETS), "work_dir": str(base / "local")}},
    }
    gateway = GatewayThread(base / "gateway", config).start()
    runtime = LifecycleRuntime(gateway.config, gateway.gateway.registry,
                               gateway.gateway.policy.set_stored_roles)
    gateway.gateway.wake_timeout = 90
    asyncio.run_coroutine_threadsafe(runtime.start(), gateway.loop).result(30)
    store = SQLiteTenantStore(base / "tenants.db")
    world = World(base, ca, idp, gateway, {})
    try:
        yield world, store
    finally:
        asyncio.run_coroutine_threadsafe(runtime.stop(), gateway.loop).result(60)
        for pid_file in (base / "local" / "tenants").glob("*/pid"):
            stop_process(pid_file, "kube-apiserver")
        stop_process(base / "local" / "etcd" / "pid", "etcd")
        asyncio.run(store.close())
        gateway.stop()
        idp.stop()


def _phase(store, name):
    try:
        return asyncio.run(store.get(name)).status.phase
    except Exception:
        return None


def test_two_tenants_pause_wake_upgrade_delete(lab):
    world, store = lab
    ops = TenantOperations(store)
    for name in ("tenant1", "tenant2"):
        asyncio.run(ops.create(TenantSpec(name=name, admin_groups=[f"oidc:{name}-admins"])))
    for name in ("tenant1", "tenant2"):
        _until(lambda n=name: _phase(store, n) is Phase.ready, 180, f"{name} ready")

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
    _until(lambda: _phase(store, "tenant1") is Phase.paused, 60, "tenant1 paused")
    paused = world.kubectl("tenant1", "alice", "get", "ns")
    assert paused.returncode != 0 and b"paused" in paused.stderr

    # auto-wake: the request is held while the API server starts, then answered
    record = asyncio.run(store.get("tenant1"))
    asyncio.run(store.update_spec("tenant1", record.spec.model_copy(update={"auto_wake": True}),
                                  record.version))
    _until(lambda: asyncio.run(store.get("tenant1")).status.route.auto_wake, 30, "auto-wake")
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
    _until(lambda: _phase(store, "tenant1") is None, 120, "tenant1 deleted")
    gone = world.kubectl("tenant1", "alice", "get", "ns")
    assert gone.returncode != 0 and b"not found" in gone.stderr
    still = world.kubectl("tenant2", "carol", "get", "ns")
    assert still.returncode == 0, still.stderr
    assert not (world.dir / "local" / "tenants" / "tenant1").exists()
    assert yaml.safe_load(world.kubectl("tenant2", "carol", "get", "ns", "-o", "yaml").stdout)
