"""`kubectl --as` through a gateway with nested impersonation enabled: each requested
attribute is checked by a SubjectAccessReview at the tenant's real API server, whose audit
log shows who each request finally ran as."""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator

import httpx
import pytest
import yaml

from gateway.lifecycle.credentials.bootstrap import NAMESPACE, SERVICE_ACCOUNT, bootstrap_objects
from tests.support.gateway_thread import GatewayThread
from tests.support.kube import GATEWAY_EXTRAS, audit_id_of, impersonator_token
from tests.support.kubectl_world import KUBECTL, World, wait_for

#: The README's credential for nested impersonation: impersonate users, groups and uids,
#: create SubjectAccessReviews, and the extras the gateway sends, `vgate.io/original-user`
#: included.
NESTED_ACCOUNT = "vgate-nested"
ORIGINAL_USER_EXTRA = "vgate.io/original-user"  # the extra naming who asked (README)


@pytest.fixture(scope="module")
def nested(world: World) -> Iterator[GatewayThread]:
    token = impersonator_token(
        world.tenants["tenant1"],
        NESTED_ACCOUNT,
        extras=(*GATEWAY_EXTRAS, ORIGINAL_USER_EXTRA),
        may_review=True,
    )
    token_file = world.dir / "nested-tenant1.token"
    token_file.write_text(token + "\n")
    tenants = [
        {**t, "token_file": str(token_file)} if t["name"] == "tenant1" else t
        for t in world.gateway_config["tenants"]
    ]
    config = {
        **world.gateway_config,
        "tenants": tenants,
        "nested_impersonation": {"enabled": True},
        "audit": {"file": str(world.dir / "nested-audit.log")},
    }
    with GatewayThread(world.dir / "gateway-nested", config) as gw:
        yield gw


def kubectl(
    world: World, gw: GatewayThread, user: str, *args: str, tenant: str = "tenant1"
) -> subprocess.CompletedProcess:
    kubeconfig = world.dir / f"nested-{user}-{tenant}-{gw.port}.kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "t1",
                        "cluster": {
                            "server": f"{gw.url}/clusters/{tenant}",
                            "certificate-authority": str(world.ca.cert_file),
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": world.token(user)}}],
                "contexts": [
                    {
                        "name": "c",
                        "context": {"cluster": "t1", "user": user, "namespace": "default"},
                    }
                ],
                "current-context": "c",
            }
        )
    )
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args], capture_output=True, timeout=30
    )


def test_admin_may_act_as_someone_else(world: World, nested: GatewayThread) -> None:
    result = kubectl(
        world,
        nested,
        "alice",
        "auth",
        "whoami",
        "-o",
        "json",
        "-v=8",
        "--as",
        "dave@example.com",
        "--as-group",
        "team-d",
        "--as-uid",
        "u-dave",
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == "dave@example.com"
    assert info["uid"] == "u-dave"
    assert sorted(info["groups"]) == ["system:authenticated", "team-d"], (
        "the caller's role does not leak"
    )
    assert info["extra"] == {ORIGINAL_USER_EXTRA: ["oidc:alice@example.com"]}
    api = world.tenants["tenant1"]
    ran = api.audit.ran_as(audit_id_of(result.stderr.decode(), "selfsubjectreviews"))
    assert (ran.user, ran.uid) == ("dave@example.com", "u-dave")
    assert ran.authenticated_as == f"system:serviceaccount:default:{NESTED_ACCOUNT}"
    # the API server itself decided the SubjectAccessReviews, asked by the gateway's account
    reviews = api.audit.matching(verb="create", requestURI=SAR_PATH)
    assert any(e["user"]["username"] == ran.authenticated_as for e in reviews)


SAR_PATH = "/apis/authorization.k8s.io/v1/subjectaccessreviews"


def test_viewer_may_not_and_nothing_reaches_the_api(world: World, nested: GatewayThread) -> None:
    api = world.tenants["tenant1"]
    reviews_before = len(api.audit.matching(verb="create", requestURI=SAR_PATH))
    result = kubectl(world, nested, "bob", "get", "pods", "--as", "alice@example.com", "-v=8")
    assert result.returncode != 0
    assert b'cannot impersonate users "alice@example.com"' in result.stderr
    refused = audit_id_of(result.stderr.decode(), "/api")  # discovery, kubectl's first call
    # the SubjectAccessReview went upstream (and the real RBAC said no), the request never
    assert len(api.audit.matching(verb="create", requestURI=SAR_PATH)) > reviews_before
    assert not api.audit.has(refused)


def _raw(world: World, gw: GatewayThread, user: str, headers: dict) -> httpx.Response:
    return httpx.get(
        f"{gw.url}/clusters/tenant1/api/v1/namespaces/default/pods",
        headers={"Authorization": f"Bearer {world.token(user)}", **headers},
        verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
        timeout=10,
    )


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({"Impersonate-Group": "team-d"}, "without impersonating a user"),
        ({"Impersonate-Uid": "u-1"}, "without impersonating a user"),
        ({"Impersonate-User": b"d\xe9ve"}, "not ASCII"),
        ({"Impersonate-User": "x" * 2000}, "too long"),
    ],
)
def test_malformed_requests_are_400(
    world: World, nested: GatewayThread, headers: dict, needle: str
) -> None:
    r = _raw(world, nested, "alice", headers)
    assert r.status_code == 400
    assert needle in r.json()["message"]


def test_reserved_extras_cannot_be_requested(world: World, nested: GatewayThread) -> None:
    r = _raw(
        world,
        nested,
        "alice",
        {"Impersonate-User": "dave@example.com", "Impersonate-Extra-vgate.io%2Ftenant": "tenant2"},
    )
    assert r.status_code == 403
    assert "reserved" in r.json()["message"]


def test_decision_is_audited(world: World, nested: GatewayThread) -> None:
    kubectl(world, nested, "alice", "get", "pods", "--as", "erin@example.com")
    log = world.dir / "nested-audit.log"
    assert wait_for(lambda: log.exists() and "erin@example.com" in log.read_text())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    event = [e for e in events if "impersonating erin@example.com" in str(e.get("granted_by"))][-1]
    assert event["user"] == "oidc:alice@example.com" and event["decision"] == "allow"


def test_nested_impersonation_works_with_the_lifecycle_bootstrap(world: World, tmp_path) -> None:
    """The credential the lifecycle manager sets up in every tenant, on a real API server."""
    api = world.tenants["tenant2"]
    api.apply(yaml.safe_dump_all(bootstrap_objects()))
    token_file = tmp_path / "bootstrap.token"
    token_file.write_text(api.token(SERVICE_ACCOUNT, NAMESPACE) + "\n")
    tenants = [
        {**t, "token_file": str(token_file)} if t["name"] == "tenant2" else t
        for t in world.gateway_config["tenants"]
    ]
    config = {
        **world.gateway_config,
        "tenants": tenants,
        "nested_impersonation": {"enabled": True},
        "audit": {"file": str(tmp_path / "audit.log")},
    }
    with GatewayThread(tmp_path / "gateway", config) as gw:
        plain = kubectl(world, gw, "carol", "auth", "whoami", "-o", "json", tenant="tenant2")
        assert plain.returncode == 0, plain.stderr.decode()  # the credential itself works
        result = kubectl(
            world,
            gw,
            "carol",
            "auth",
            "whoami",
            "-o",
            "json",
            "--as",
            "dave@example.com",
            "--as-group",
            "team-d",
            tenant="tenant2",
        )
    assert result.returncode == 0, result.stderr.decode()[-1500:]
    info = json.loads(result.stdout)["status"]["userInfo"]
    assert info["username"] == "dave@example.com"
    assert info["extra"][ORIGINAL_USER_EXTRA] == ["oidc:carol@example.com"]


def test_a_credential_without_review_rights_is_named_not_retried(world: World, tmp_path) -> None:
    """The world's own credential may impersonate but not review: `kubectl --as` must say
    what is missing rather than invite a retry."""
    config = {
        **world.gateway_config,
        "nested_impersonation": {"enabled": True},
        "audit": {"file": str(tmp_path / "audit.log")},
    }
    with GatewayThread(tmp_path / "gateway", config) as gw:
        r = httpx.get(
            f"{gw.url}/clusters/tenant1/api/v1/namespaces/default/pods",
            headers={
                "Authorization": f"Bearer {world.token('alice')}",
                "Impersonate-User": "dave@example.com",
            },
            verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
            timeout=10,
        )
    assert r.status_code == 502, r.text  # the gateway's fault, and no retry will cure it
    assert r.headers.get("retry-after") is None
    message = r.json()["message"]
    assert "create authorization.k8s.io/subjectaccessreviews" in message, message
    assert 'tenant "tenant1"' in message
