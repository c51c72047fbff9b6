"""End to end with the `local` provisioner, all real: tenants created, paused, woken by a
request, resumed, upgraded and deleted with the `vgate tenant` command against the gateway's
store, while the gateway (its lifecycle manager) starts and stops real kube-apiservers (one
shared etcd); real kubectl through vgate by path and by hostname; who each request ran as
read from the tenant API server's own audit log; no process left behind."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.lifecycle.model import Desired, Phase
from gateway.lifecycle.provisioning.local_process import running_executable, running_pid
from gateway.lifecycle.provisioning.local_versions import platform_suffix
from tests.e2e.conftest import phase, until
from tests.support.kube import AuditLog, RanAs, ran_as
from tests.support.kubectl_world import World, host_mode_available
from tests.support.local_kube import processes_under

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SA = "system:serviceaccount:vgate-system:vgate-gateway"


def vgate_tenant(world: World, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`vgate tenant --config <the gateway's config> ...` as a person runs it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "tenant",
            "--config",
            str(world.gateway.config_file),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    out = result.stdout if isinstance(result.stdout, str) else result.stdout.decode()
    err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == 0, err[-2000:]
    return out


def shown(world: World, name: str) -> dict:
    return json.loads(ok(vgate_tenant(world, "show", name, "-o", "json")))


def listed_version(world: World, name: str) -> str:
    rows = [r.split() for r in ok(vgate_tenant(world, "list")).splitlines()[1:]]
    return next(r[3] for r in rows if r[0] == name)


def kubectl_events(log: AuditLog, resource: str, verb: str, since: int) -> list[RanAs]:
    """Who kubectl's `verb` requests on `resource` ran as (events after the first `since`)."""
    events = [
        e
        for e in log.events()[since:]
        if e.get("stage") == "ResponseComplete"
        and e.get("verb") == verb
        and e.get("userAgent", "").startswith("kubectl/")
        and (e.get("objectRef") or {}).get("resource") == resource
    ]
    return [ran_as(e) for e in events]


def through_gateway(world: World, user: str, tenant: str, path: str) -> httpx.Response:
    verify = ssl.create_default_context(cafile=str(world.ca.cert_file))
    return httpx.get(
        f"{world.gateway.url}/clusters/{tenant}{path}",
        verify=verify,
        headers={"Authorization": f"Bearer {world.token(user)}"},
        timeout=60,
    )


def apiservers(folder: Path) -> list[str]:
    return [c for c in processes_under(folder).values() if "kube-apiserver" in c.split()[0]]


def etcds(folder: Path) -> list[str]:
    return [c for c in processes_under(folder).values() if c.split()[0].endswith("etcd")]


def test_local_tenants_from_create_to_delete(lab):
    world, store = lab
    local = world.dir / "local"
    assert (apiservers(local), etcds(local)) == ([], [])  # nothing runs before
    audit = {
        name: AuditLog(local / "tenants" / name / "audit.log") for name in ("tenant1", "tenant2")
    }

    # create, following the steps until Ready (the gateway's manager does the work)
    created = vgate_tenant(
        world,
        "create",
        "tenant1",
        "--admin-group",
        "oidc:tenant1-admins",
        "--view-group",
        "oidc:developers",
        "--wait",
        "--timeout",
        "180",
    )
    assert ok(created).splitlines()[-1] == 'tenant "tenant1" ready'
    assert "tenant1: apiserver" in created.stdout  # the slow step (quick ones may pass unseen)
    ok(
        vgate_tenant(
            world,
            "create",
            "tenant2",
            "--admin-group",
            "oidc:tenant2-admins",
            "--wait",
            "--timeout",
            "180",
        )
    )
    assert len(apiservers(local)) == 2 and len(etcds(local)) == 1

    # the version shown is the one the tenant's API server reports through vgate
    served = through_gateway(world, "alice", "tenant1", "/version")
    assert served.status_code == 200, served.text
    assert served.json()["gitVersion"] == "v1.28.7"
    assert shown(world, "tenant1")["observed_k8s_version"] == "v1.28.7"
    assert shown(world, "tenant1")["k8s_version"] == "1.28"
    assert listed_version(world, "tenant1") == "v1.28.7"

    # real kubectl through vgate, by path and by hostname; the audit log of the tenant's own
    # API server says who each request ran as
    seen = len(audit["tenant1"].events())
    names = ok(world.kubectl("tenant1", "alice", "get", "namespaces", "-o", "name"))
    assert "namespace/kube-system" in names
    why = host_mode_available()
    if why is None:
        assert "namespace/default" in ok(
            world.kubectl("tenant1", "alice", "get", "ns", "-o", "name", mode="host")
        )
    else:
        print(f"hostname routing not exercised: {why}")
    until(
        lambda: (
            len(kubectl_events(audit["tenant1"], "namespaces", "list", seen)) >= (1 if why else 2)
        ),
        10,
        "audit events",
    )
    for who in kubectl_events(audit["tenant1"], "namespaces", "list", seen):
        assert who.impersonated and who.authenticated_as == GATEWAY_SA
        assert (who.user, who.uid) == ("oidc:alice@example.com", "alice")
        assert set(who.groups) == {"vgate:cluster-admin", "system:authenticated"}
        assert who.extra == {}, "the gateway impersonates no extras"
    pinned = through_gateway(world, "bob", "tenant1", "/api/v1/namespaces/default/configmaps")
    assert pinned.status_code == 200, pinned.text
    bob = audit["tenant1"].ran_as(pinned.headers["audit-id"])
    assert (bob.user, bob.authenticated_as) == ("oidc:bob@example.com", GATEWAY_SA)
    assert "vgate:view" in bob.groups and "vgate:cluster-admin" not in bob.groups
    denied = world.kubectl("tenant1", "bob", "create", "configmap", "nope", "--from-literal=a=b")
    assert denied.returncode != 0 and b"forbidden" in denied.stderr.lower()
    other = world.kubectl("tenant2", "alice", "get", "ns")
    assert other.returncode != 0 and b'no access to tenant "tenant2"' in other.stderr
    ok(world.kubectl("tenant1", "alice", "create", "configmap", "kept", "--from-literal=k=v"))

    # pause: the API server stops; requests get a 503 saying so
    pid_file = local / "tenants" / "tenant1" / "pid"
    assert (
        ok(vgate_tenant(world, "pause", "tenant1", "--wait")).splitlines()[-1]
        == 'tenant "tenant1" paused'
    )
    assert running_pid(pid_file, "kube-apiserver") is None
    assert len(apiservers(local)) == 1
    paused = world.kubectl("tenant1", "alice", "get", "ns")
    assert paused.returncode != 0 and b"paused" in paused.stderr

    # wake on request: the request is held while the API server starts, then answered
    record = asyncio.run(store.get("tenant1"))
    asyncio.run(
        store.update_spec(
            "tenant1", record.spec.model_copy(update={"auto_wake": True}), record.version
        )
    )
    until(lambda: asyncio.run(store.get("tenant1")).status.route.auto_wake, 30, "auto-wake")
    time.sleep(0.5)  # the gateway's registry has the waking route
    woke = world.kubectl("tenant1", "alice", "get", "configmap", "kept", "-o", "name", timeout=120)
    assert ok(woke).strip() == "configmap/kept"
    assert asyncio.run(store.get("tenant1")).spec.desired is Desired.running
    until(lambda: phase(store, "tenant1") is Phase.ready, 60, "tenant1 ready after waking")

    # pause and resume by command
    ok(vgate_tenant(world, "pause", "tenant1", "--wait"))
    assert (
        ok(vgate_tenant(world, "resume", "tenant1", "--wait")).splitlines()[-1]
        == 'tenant "tenant1" ready'
    )
    before_upgrade = running_pid(pid_file, "kube-apiserver")
    assert before_upgrade is not None

    # upgrade: refused to a version no binary exists for, naming what there is
    refused = vgate_tenant(world, "upgrade", "tenant1", "--k8s-version", "1.30")
    assert refused.returncode == 2
    assert "k8s_version: Kubernetes 1.30 is not available here (available: 1.28" in refused.stderr
    assert f"1.29 ({world.dir}/assets/k8s/1.29.0-{platform_suffix()}" in refused.stderr
    # to the 1.29 folder: a new process on that binary, same data, version as reported
    upgraded = vgate_tenant(world, "upgrade", "tenant1", "--k8s-version", "1.29", "--wait")
    assert ok(upgraded).splitlines()[-1] == 'tenant "tenant1" ready'
    after_upgrade = running_pid(pid_file, "kube-apiserver")
    assert after_upgrade not in (None, before_upgrade)
    assert running_executable(pid_file, "kube-apiserver") == str(
        world.dir / "assets" / "k8s" / f"1.29.0-{platform_suffix()}" / "kube-apiserver"
    )
    assert shown(world, "tenant1")["k8s_version"] == "1.29"
    assert shown(world, "tenant1")["observed_k8s_version"] == "v1.28.7"  # what it reports
    assert listed_version(world, "tenant1") == "v1.28.7→1.29"
    kept = ok(world.kubectl("tenant1", "alice", "get", "configmap", "kept", "-o", "yaml"))
    assert yaml.safe_load(kept)["data"] == {"k": "v"}

    # delete: gone from the gateway at once, process and files gone; tenant2 unaffected
    assert (
        ok(vgate_tenant(world, "delete", "tenant1", "--wait")).splitlines()[-1]
        == 'tenant "tenant1" deleted'
    )
    gone = world.kubectl("tenant1", "alice", "get", "ns")
    assert gone.returncode != 0 and b"not found" in gone.stderr
    assert not (local / "tenants" / "tenant1").exists()
    assert "namespace/default" in ok(world.kubectl("tenant2", "carol", "get", "ns", "-o", "name"))
    ok(vgate_tenant(world, "delete", "tenant2", "--wait"))
    assert ok(vgate_tenant(world, "list")).splitlines() == [
        "NAME  PHASE  HOSTNAME  VERSION  AGE  LAST ACTIVITY"
    ]
    # no API server left; the shared etcd runs until the gateway's host stops it
    assert apiservers(local) == [] and len(etcds(local)) == 1
