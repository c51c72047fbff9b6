"""Issue 2's kubectl checks against real kube-apiservers: real RBAC decides what the
impersonated role groups may do, and two API servers on one etcd stay apart."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.e2e.conftest import ready_tenants
from tests.integration.conftest import World, host_mode_available

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata: {name: %s, namespace: default}
data: {k: v}
"""


@pytest.fixture(scope="module")
def world(lab) -> World:
    world, store = lab
    ready_tenants(store)
    return world


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return result.stdout.decode()


@pytest.mark.parametrize("mode", ["path", "host"])
def test_whoami_is_the_impersonated_identity(world: World, mode: str) -> None:
    if mode == "host" and host_mode_available():
        pytest.skip(host_mode_available())
    info = json.loads(ok(world.kubectl("tenant1", "alice", "auth", "whoami", "-o", "json",
                                       mode=mode)))["status"]["userInfo"]
    assert info["username"] == "oidc:alice@example.com"
    assert info["uid"] == "alice"
    assert "vgate:cluster-admin" in info["groups"]
    assert info["extra"]["vgate.io/tenant"] == ["tenant1"]
    viewer = json.loads(ok(world.kubectl("tenant1", "bob", "auth", "whoami", "-o", "json")))
    assert "vgate:view" in viewer["status"]["userInfo"]["groups"]


def test_real_rbac_decides(world: World) -> None:
    assert ok(world.kubectl("tenant1", "alice", "auth", "can-i", "delete", "pods")).strip() == "yes"
    viewer = world.kubectl("tenant1", "bob", "auth", "can-i", "delete", "pods")
    assert viewer.stdout.strip() == b"no"
    assert ok(world.kubectl("tenant1", "bob", "auth", "can-i", "list", "pods")).strip() == "yes"
    denied = world.kubectl("tenant1", "bob", "create", "configmap", "nope", "--from-literal=a=b")
    assert denied.returncode != 0
    assert b"forbidden" in denied.stderr.lower()
    assert b"oidc:bob@example.com" in denied.stderr


def test_apply_server_side_and_dry_run(world: World) -> None:
    dry = world.kubectl("tenant1", "alice", "apply", "--server-side", "--dry-run=server", "-f",
                        "-", input=(CONFIGMAP % "dry").encode())
    ok(dry)
    assert world.kubectl("tenant1", "alice", "get", "configmap", "dry").returncode != 0
    ok(world.kubectl("tenant1", "alice", "apply", "--server-side", "-f", "-",
                     input=(CONFIGMAP % "real").encode()))
    got = json.loads(ok(world.kubectl("tenant1", "alice", "get", "configmap", "real",
                                      "-o", "json")))
    managers = {m["manager"] for m in got["metadata"]["managedFields"]}
    assert "kubectl" in managers
    # the same name does not exist in the other virtual cluster (its own etcd prefix)
    other = world.kubectl("tenant2", "carol", "get", "configmap", "real")
    assert other.returncode != 0 and b"not found" in other.stderr.lower()


def test_watch_receives_events_and_ends_with_the_client(world: World) -> None:
    argv = world.kubectl_argv("tenant1", "alice",
                              ["get", "configmaps", "--watch-only", "-o", "name"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(2)
        ok(world.kubectl("tenant1", "alice", "create", "configmap", "watched",
                         "--from-literal=a=b"))
        line = proc.stdout.readline() if proc.stdout else b""
        assert line.strip() == b"configmap/watched"
    finally:
        proc.terminate()
        proc.wait(10)


def test_no_role_is_403_naming_the_tenant(world: World) -> None:
    result = world.kubectl("tenant1", "carol", "get", "pods")
    assert result.returncode != 0
    assert b'no access to tenant "tenant1"' in result.stderr


def test_as_is_refused(world: World) -> None:
    result = world.kubectl("tenant1", "alice", "--as", "someone", "get", "pods")
    assert result.returncode != 0
    assert b"impersonation" in result.stderr
