"""Plain kubectl through the gateway to real kube-apiservers, by path prefix and by hostname:
what each request ran as comes from the API server's own audit log, and its RBAC decides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import httpx
import jwt
import pytest

from tests.support.kube import audit_id_of
from tests.support.kubectl_world import KUBECTL, World, ok, pinned_kubectl, wait_for
from tests.support.tenants import GATEWAY_SERVICE_ACCOUNT


def sub_of(world: World, user: str) -> str:
    return jwt.decode(world.token(user), options={"verify_signature": False})["sub"]


def gateway_audit(world: World) -> list[dict]:
    path = world.dir / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def test_get_pods_runs_as_the_impersonated_user(world: World, mode: str) -> None:
    result = world.kubectl("tenant1", "alice", "get", "pods", "-o", "name", "-v=8", mode=mode)
    assert "pod/web-0" in ok(result)
    ran = world.ran_as("tenant1", result, "/api/v1/namespaces/default/pods")
    audit_id = ran.event["auditID"]
    assert ran.impersonated
    assert ran.authenticated_as == GATEWAY_SERVICE_ACCOUNT, "the gateway's own credential"
    assert ran.user == "oidc:alice@example.com"
    assert ran.uid == sub_of(world, "alice"), "uid is the token's sub"
    assert set(ran.groups) == {"vgate:cluster-admin", "system:authenticated"}
    # no extras: the issuer and tenant are in the gateway's audit line, found by the audit id
    assert ran.extra == {}
    assert ran.event["responseStatus"]["code"] == 200
    # the API server's audit ID is the gateway's request id, in the gateway's audit line too
    assert wait_for(lambda: any(e["request_id"] == audit_id for e in gateway_audit(world)))
    line = next(e for e in gateway_audit(world) if e["request_id"] == audit_id)
    assert (line["user"], line["tenant"], line["status"]) == (
        "oidc:alice@example.com",
        "tenant1",
        200,
    )


def test_tenants_are_isolated(world: World) -> None:
    # alice is cluster-admin in tenant1 and has no role in tenant2
    denied = world.kubectl("tenant2", "alice", "get", "pods")
    assert denied.returncode != 0
    assert b'has no access to tenant "tenant2"' in denied.stderr
    name = f"only-in-tenant1-{time.monotonic_ns()}"
    ok(world.kubectl("tenant1", "alice", "create", "configmap", name))
    # carol is cluster-admin in tenant2: another API server, another etcd prefix
    other = world.kubectl("tenant2", "carol", "get", "configmap", name)
    assert other.returncode != 0 and b"NotFound" in other.stderr, other.stderr
    ok(world.kubectl("tenant1", "alice", "delete", "configmap", name))


def test_no_role_is_403_audited_and_never_forwarded(world: World) -> None:
    result = world.kubectl("tenant1", "mallory", "get", "pods", "-v=8")
    assert result.returncode != 0
    assert b"Forbidden" in result.stderr or b"forbidden" in result.stderr
    audit_id = audit_id_of(result.stderr.decode(), "/pods")
    assert wait_for(lambda: any(e["request_id"] == audit_id for e in gateway_audit(world)))
    denial = next(e for e in gateway_audit(world) if e["request_id"] == audit_id)
    assert denial["user"] == "oidc:mallory@example.com"
    assert denial["decision"] == "deny" and denial["status"] == 403
    assert "no role" in denial["reason"]
    ok(world.kubectl("tenant1", "alice", "get", "ns"))  # a later request is logged...
    assert not world.tenants["tenant1"].audit.has(audit_id), "...the refused one never was"


def test_auth_whoami_shows_impersonated_identity(world: World, mode: str) -> None:
    out = ok(world.kubectl("tenant1", "bob", "auth", "whoami", "-o", "json", mode=mode))
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "oidc:bob@example.com"
    assert info["uid"] == sub_of(world, "bob")
    assert sorted(info["groups"]) == ["system:authenticated", "vgate:view"]
    assert not any(g.startswith("oidc:") for g in info["groups"]), "IdP groups are not forwarded"
    assert not info.get("extra"), "the gateway impersonates no extras"


def test_auth_can_i_follows_the_role(world: World) -> None:
    assert ok(world.kubectl("tenant1", "alice", "auth", "can-i", "delete", "pods")).strip() == "yes"
    viewer = world.kubectl("tenant1", "bob", "auth", "can-i", "delete", "pods")
    assert viewer.stdout.decode().strip() == "no"
    assert ok(world.kubectl("tenant1", "bob", "auth", "can-i", "list", "pods")).strip() == "yes"
    listed = ok(world.kubectl("tenant1", "bob", "auth", "can-i", "--list"))
    # SelfSubjectRulesReview: the rules of the role `view` is bound to in this cluster
    assert any(
        line.split()[:1] == ["*.apps"] and line.endswith("[get list watch]")
        for line in listed.splitlines()
    ), listed


def test_real_rbac_refuses_a_viewer_write(world: World) -> None:
    denied = world.kubectl("tenant1", "bob", "create", "configmap", "nope", "-v=8")
    assert denied.returncode != 0
    assert (
        b'configmaps is forbidden: User "oidc:bob@example.com" cannot create resource "configmaps"'
    ) in denied.stderr
    ran = world.ran_as("tenant1", denied, "configmaps")
    assert ran.event["responseStatus"]["code"] == 403
    assert ran.event["annotations"]["authorization.k8s.io/decision"] == "forbid"


def test_as_flag_is_refused_clearly(world: World) -> None:
    result = world.kubectl("tenant1", "alice", "--as", "bob@example.com", "get", "pods", "-v=8")
    assert result.returncode != 0
    assert b"impersonation" in result.stderr
    audit_id = audit_id_of(result.stderr.decode(), "/pods")
    ok(world.kubectl("tenant1", "alice", "get", "ns"))
    assert not world.tenants["tenant1"].audit.has(audit_id), "refused at the gateway"


@pytest.mark.parametrize(
    ("client", "websocket"),
    [
        ("dispatched", "false"),  # kubectl 1.28 (the server's minor): SPDY only
        ("1.32", "true"),  # tries a WebSocket upgrade first
        ("1.32", "false"),
    ],
)
def test_exec_refusals_of_the_real_server_are_relayed(
    world: World, client: str, websocket: str
) -> None:
    kubectl = KUBECTL if client == "dispatched" else pinned_kubectl(client.split(".")[1])
    env = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": websocket}
    viewer = world.kubectl(
        "tenant1", "bob", "exec", "web-0", "--", "echo", "hi", env=env, kubectl=kubectl
    )
    assert viewer.returncode != 0
    assert (
        b'pods "web-0" is forbidden: User "oidc:bob@example.com" cannot create resource "pods/exec"'
    ) in viewer.stderr, viewer.stderr
    # alice may, but no kubelet runs the pod: the API server's own 400 reaches kubectl
    admin = world.kubectl(
        "tenant1", "alice", "exec", "web-0", "--", "echo", "hi", env=env, kubectl=kubectl
    )
    assert admin.returncode != 0
    assert b"pod web-0 does not have a host assigned" in admin.stderr, admin.stderr
    clients = {
        e.get("userAgent", "").split("/")[0]
        for e in world.tenants["tenant1"].audit.matching(
            objectRef={
                "resource": "pods",
                "namespace": "default",
                "name": "web-0",
                "apiVersion": "v1",
                "subresource": "exec",
            }
        )
    }
    assert ("kubectl.1.32" if client == "1.32" else "kubectl") in clients, clients


def test_apply_server_side_and_dry_run(world: World, mode: str) -> None:
    name = f"cm-{mode}"
    manifest = json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}
    ).encode()
    ok(
        world.kubectl(
            "tenant1",
            "alice",
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
            input=manifest,
            mode=mode,
        )
    )
    missing = world.kubectl("tenant1", "alice", "get", "configmap", name, mode=mode)
    assert missing.returncode != 0, "dry-run must not persist"
    ok(
        world.kubectl(
            "tenant1", "alice", "apply", "--server-side", "-f", "-", input=manifest, mode=mode
        )
    )
    got = json.loads(
        ok(
            world.kubectl(
                "tenant1",
                "alice",
                "get",
                "configmap",
                name,
                "-o",
                "json",
                "--show-managed-fields",
                mode=mode,
            )
        )
    )
    assert got["data"] == {"k": "v"}
    assert [(m["manager"], m["operation"]) for m in got["metadata"]["managedFields"]] == [
        ("kubectl", "Apply")
    ]
    # another manager taking the field over is a real SSA conflict
    clash = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name},
            "data": {"k": "other"},
        }
    ).encode()
    conflict = world.kubectl(
        "tenant1",
        "alice",
        "apply",
        "--server-side",
        "--field-manager=other",
        "-f",
        "-",
        input=clash,
        mode=mode,
    )
    assert conflict.returncode != 0 and b"conflict" in conflict.stderr.lower()
    ok(world.kubectl("tenant1", "alice", "delete", "configmap", name, mode=mode))


def _http2_gauges(world: World) -> tuple[float, float]:
    """(HTTP/2 connections, streams on them) from the gateway's metrics listener."""
    text = httpx.get(f"{world.gateway.metrics_url}/metrics").text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("vgate_upstream_http2_connections", "vgate_upstream_http2_streams"):
            values[name] = float(value)
    return values["vgate_upstream_http2_connections"], values["vgate_upstream_http2_streams"]


def test_watches_share_one_http2_connection_upstream(world: World) -> None:
    """Eight kubectl watches reach the real API server as eight streams of one HTTP/2
    connection (HTTP/1.1 would hold eight connections), each runs as the user who asked and
    gets the event, and each stream is reset when its client goes."""
    audit = world.tenants["tenant1"].audit
    before = audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT)
    argv = world.kubectl_argv("tenant1", "alice", ["get", "configmaps", "-w", "-o", "name"])
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(8)
    ]
    opened: set[str] = set()
    try:
        assert wait_for(
            lambda: len(audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT) - before) == 8,
            timeout=15,
        ), "the eight watches did not all reach the API server"
        opened = audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT) - before
        assert _http2_gauges(world) == (1, 8)
        started = [e for e in audit.events() if e.get("auditID") in opened]
        assert {e["impersonatedUser"]["username"] for e in started} == {"oidc:alice@example.com"}
        name = f"fanned-{int(time.time() * 1000)}"
        ok(world.kubectl("tenant1", "alice", "create", "configmap", name))
        for proc in procs:
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
        seen = [b""] * len(procs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(name.encode() in s for s in seen):
            for i, proc in enumerate(procs):
                seen[i] += proc.stdout.read() or b"" if proc.stdout else b""
            time.sleep(0.05)
        assert all(name.encode() in s for s in seen), seen
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(10)
    assert wait_for(
        lambda: not opened & audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT), timeout=5
    ), "an upstream watch outlived its client (its stream was not reset)"
    assert wait_for(lambda: _http2_gauges(world) == (1, 0), timeout=5)


def test_watch_streams_events_and_cancels_upstream(world: World, mode: str) -> None:
    audit = world.tenants["tenant1"].audit
    before = audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT)
    proc = subprocess.Popen(
        world.kubectl_argv("tenant1", "alice", ["get", "configmaps", "-w", "-o", "name"], mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    opened: set[str] = set()
    try:
        assert wait_for(
            lambda: audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT) - before, timeout=10
        ), "the watch never reached the API server"
        opened = audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT) - before
        name = f"watched-{mode}-{int(time.time() * 1000)}"
        ok(world.kubectl("tenant1", "alice", "create", "configmap", name, mode=mode))
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 5
        while name.encode() not in seen and time.monotonic() < deadline:
            seen += proc.stdout.read() or b""
            time.sleep(0.05)
        assert name.encode() in seen, seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert wait_for(
        lambda: not opened & audit.open_requests("watch", GATEWAY_SERVICE_ACCOUNT), timeout=5
    ), "the upstream watch outlived the client"
    ended = audit.find(next(iter(opened)))
    assert ended["impersonatedUser"]["username"] == "oidc:alice@example.com"


def test_only_the_gateway_authenticates_upstream(world: World) -> None:
    """Everything that reached a real tenant from the gateway authenticated as its
    ServiceAccount and impersonated someone; no client token ever authenticated there."""
    ok(world.kubectl("tenant1", "bob", "get", "pods"))
    for name, api in world.tenants.items():
        events = [e for e in api.audit.events() if "impersonatedUser" in e]
        assert events or name != "tenant1"
        for event in events:  # this world's gateway, or another test's gateway account
            assert event["user"]["username"].startswith("system:serviceaccount:"), event
        users = {(e.get("user") or {}).get("username", "") for e in api.audit.events()}
        assert not any(u.startswith("oidc:") for u in users), users
