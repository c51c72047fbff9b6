"""`kubectl --as` through a gateway with nested impersonation enabled: each requested
attribute is checked by a SubjectAccessReview at the tenant's API server."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.integration.conftest import KUBECTL, World, wait_for
from tests.support.gateway_thread import GatewayThread

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def nested(world: World) -> Iterator[GatewayThread]:
    config = {**world.gateway_config, "nested_impersonation": {"enabled": True},
              "audit": {"file": str(world.dir / "nested-audit.log")}}
    with GatewayThread(world.dir / "gateway-nested", config) as gw:
        yield gw


def kubectl(world: World, gw: GatewayThread, user: str, *args: str) -> subprocess.CompletedProcess:
    kubeconfig = world.dir / f"nested-{user}.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "t1", "cluster": {"server": f"{gw.url}/clusters/tenant1",
                                                "certificate-authority": str(world.ca.cert_file)}}],
        "users": [{"name": user, "user": {"token": world.token(user)}}],
        "contexts": [{"name": "c", "context": {"cluster": "t1", "user": user,
                                               "namespace": "default"}}],
        "current-context": "c",
    }))
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, timeout=30)


def test_admin_may_act_as_someone_else(world: World, nested: GatewayThread) -> None:
    result = kubectl(world, nested, "alice", "auth", "whoami", "-o", "json",
                     "--as", "dave@example.com", "--as-group", "team-d", "--as-uid", "u-dave")
    assert result.returncode == 0, result.stderr.decode()
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == "dave@example.com"
    assert info["uid"] == "u-dave"
    assert "team-d" in info["groups"]
    assert "vgate:cluster-admin" not in info["groups"], "the caller's role does not leak"
    assert info["extra"]["vgate.io/original-user"] == ["oidc:alice@example.com"]
    assert info["extra"]["vgate.io/tenant"] == ["tenant1"]


def test_viewer_may_not_and_nothing_reaches_the_api(world: World,
                                                    nested: GatewayThread) -> None:
    before = len(world.tenants["tenant1"].records)
    result = kubectl(world, nested, "bob", "get", "pods", "--as", "alice@example.com")
    assert result.returncode != 0
    assert b'cannot impersonate users "alice@example.com"' in result.stderr
    # only the SubjectAccessReview went upstream, never the request itself
    later = world.tenants["tenant1"].records[before:]
    assert [r.target.split(b"?")[0] for r in later] == [
        b"/apis/authorization.k8s.io/v1/subjectaccessreviews"]


def _raw(world: World, gw: GatewayThread, user: str, headers: dict) -> httpx.Response:
    return httpx.get(f"{gw.url}/clusters/tenant1/api/v1/namespaces/default/pods",
                     headers={"Authorization": f"Bearer {world.token(user)}", **headers},
                     verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
                     timeout=10)


@pytest.mark.parametrize(("headers", "needle"), [
    ({"Impersonate-Group": "team-d"}, "without impersonating a user"),
    ({"Impersonate-Uid": "u-1"}, "without impersonating a user"),
    ({"Impersonate-User": b"d\xe9ve"}, "not ASCII"),
    ({"Impersonate-User": "x" * 2000}, "too long"),
])
def test_malformed_requests_are_400(world: World, nested: GatewayThread, headers: dict,
                                    needle: str) -> None:
    r = _raw(world, nested, "alice", headers)
    assert r.status_code == 400
    assert needle in r.json()["message"]


def test_reserved_extras_cannot_be_requested(world: World, nested: GatewayThread) -> None:
    r = _raw(world, nested, "alice", {"Impersonate-User": "dave@example.com",
                                      "Impersonate-Extra-vgate.io%2Ftenant": "tenant2"})
    assert r.status_code == 403
    assert "reserved" in r.json()["message"]


def test_decision_is_audited(world: World, nested: GatewayThread) -> None:
    kubectl(world, nested, "alice", "get", "pods", "--as", "erin@example.com")
    log = world.dir / "nested-audit.log"
    assert wait_for(lambda: log.exists() and "erin@example.com" in log.read_text())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    event = [e for e in events if "impersonating erin@example.com" in str(e.get("granted_by"))][-1]
    assert event["user"] == "oidc:alice@example.com" and event["decision"] == "allow"
