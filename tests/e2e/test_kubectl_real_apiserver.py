"""`vgate serve` as a platform engineer runs it: static tenants that are real kube-apiservers
(one etcd, one prefix each), the gateway's credential made with the README's commands, real
kubectl through the command's two workers. Real RBAC decides; the API servers' audit logs
say who each request ran as."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from gateway.lifecycle.credentials.bootstrap import EXTRA_KEYS, impersonator_rules
from tests.e2e.conftest import readme_cluster_role, readme_recipe, recipe_credential
from tests.support.kube import ApiServer, Etcd, audit_id_of
from tests.support.kubectl_world import World, host_mode_available, ok, wait_for
from tests.support.tiers import tool_missing

pytestmark = [pytest.mark.slow]

GATEWAY = "system:serviceaccount:default:vgate"
CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata: {name: %s, namespace: default}
data: {k: v}
"""


@pytest.fixture(scope="module")
def world(served: World) -> World:
    return served


@pytest.mark.parametrize("mode", ["path", "host"])
def test_whoami_is_the_impersonated_identity(world: World, mode: str) -> None:
    if mode == "host" and host_mode_available():
        tool_missing(host_mode_available())
    result = world.kubectl("tenant1", "alice", "auth", "whoami", "-o", "json", "-v=8", mode=mode)
    info = json.loads(ok(result))["status"]["userInfo"]
    assert info["username"] == "oidc:alice@example.com"
    assert info["uid"] == "alice"
    assert "vgate:cluster-admin" in info["groups"]
    assert not info.get("extra"), "the gateway impersonates no extras"
    ran = world.ran_as("tenant1", result, "selfsubjectreviews")
    assert (ran.user, ran.authenticated_as) == ("oidc:alice@example.com", GATEWAY)
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
    dry = world.kubectl(
        "tenant1",
        "alice",
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=(CONFIGMAP % "dry").encode(),
    )
    ok(dry)
    assert world.kubectl("tenant1", "alice", "get", "configmap", "dry").returncode != 0
    ok(
        world.kubectl(
            "tenant1",
            "alice",
            "apply",
            "--server-side",
            "-f",
            "-",
            input=(CONFIGMAP % "real").encode(),
        )
    )
    got = json.loads(
        ok(
            world.kubectl(
                "tenant1",
                "alice",
                "get",
                "configmap",
                "real",
                "-o",
                "json",
                "--show-managed-fields",
            )
        )
    )
    managers = {m["manager"] for m in got["metadata"]["managedFields"]}
    assert "kubectl" in managers
    # the same name does not exist in the other virtual cluster (its own etcd prefix)
    other = world.kubectl("tenant2", "carol", "get", "configmap", "real")
    assert other.returncode != 0 and b"not found" in other.stderr.lower()


def test_watch_receives_events_and_ends_with_the_client(world: World) -> None:
    audit = world.tenants["tenant1"].audit
    argv = world.kubectl_argv(
        "tenant1", "alice", ["get", "configmaps", "--watch-only", "-o", "name"]
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: audit.open_requests("watch", GATEWAY), timeout=10)
        ok(
            world.kubectl(
                "tenant1", "alice", "create", "configmap", "watched", "--from-literal=a=b"
            )
        )
        line = proc.stdout.readline() if proc.stdout else b""
        assert line.strip() == b"configmap/watched"
    finally:
        proc.terminate()
        proc.wait(10)
    assert wait_for(lambda: not audit.open_requests("watch", GATEWAY), timeout=5), (
        "the upstream watch outlived the client"
    )


def test_no_role_is_403_naming_the_tenant(world: World) -> None:
    result = world.kubectl("tenant1", "carol", "get", "pods")
    assert result.returncode != 0
    assert b'no access to tenant "tenant1"' in result.stderr


def test_as_is_refused(world: World) -> None:
    result = world.kubectl("tenant1", "alice", "--as", "someone", "get", "pods")
    assert result.returncode != 0
    assert b"impersonation" in result.stderr


def test_a_rotated_token_file_is_used_by_every_worker(world: World) -> None:
    """The platform engineer mints a new token (another ServiceAccount, same role) into the
    token file: within seconds every worker authenticates upstream with it."""
    api = world.tenants["tenant1"]
    api.kubectl("create", "serviceaccount", "vgate-next", "-n", "default")
    api.kubectl(
        "create",
        "clusterrolebinding",
        "vgate-next",
        "--clusterrole=vgate-impersonator",
        "--serviceaccount=default:vgate-next",
    )
    token_file = next(
        t["token_file"] for t in world.gateway_config["tenants"] if t["name"] == "tenant1"
    )
    old = Path(token_file).read_text()
    Path(token_file).write_text(api.token("vgate-next") + "\n")
    try:

        def all_rotated() -> bool:
            results = [world.kubectl("tenant1", "alice", "get", "ns", "-v=8") for _ in range(4)]
            return all(
                world.ran_as("tenant1", r, "/api/v1/namespaces").authenticated_as
                == "system:serviceaccount:default:vgate-next"
                for r in results
            )

        assert wait_for(all_rotated, timeout=15, interval=0.5)
    finally:
        Path(token_file).write_text(old)
    time.sleep(1.5)  # back to the first token for the other tests
    last = world.kubectl("tenant1", "alice", "get", "ns", "-v=8")
    assert audit_id_of(last.stderr.decode(), "/api/v1/namespaces")


def test_the_readmes_credential_recipe_works(tmp_path: Path) -> None:
    """The README's least-privilege recipe, run as written on a real cluster, gives a token
    the API server accepts with every header the gateway sends and every review it makes;
    its ClusterRole is the one the lifecycle manager puts in its tenants."""
    recipe = readme_recipe()
    assert [a[:2] for a, _ in recipe] == [
        ["create", "serviceaccount"],
        ["apply", "-f"],
        ["create", "clusterrolebinding"],
        ["create", "token"],
    ]
    assert readme_cluster_role()["rules"] == impersonator_rules()
    with Etcd(tmp_path / "etcd") as etcd, ApiServer(tmp_path / "api", etcd) as api:
        token = recipe_credential(api, recipe)
        tls = ssl.create_default_context(cafile=str(api.ca_file))
        # what the gateway sends with it: every header of an impersonated request, a group
        # a policy forwards, and the caller of `kubectl --as` as an extra
        headers = {
            "Authorization": f"Bearer {token}",
            "Impersonate-User": "oidc:a@example.com",
            "Impersonate-Uid": "a",
            "Impersonate-Group": "vgate:view",
            **{f"Impersonate-Extra-{quote(k, safe='')}": "x" for k in EXTRA_KEYS},
        }
        answer = httpx.get(f"{api.url}/api", headers=headers, timeout=10, verify=tls)
        assert answer.status_code == 200, answer.text
        forwarded = httpx.get(
            f"{api.url}/api",
            timeout=10,
            verify=tls,
            headers=[*headers.items(), ("Impersonate-Group", "ad:cn=team-web,dc=corp")],
        )
        assert forwarded.status_code == 200, forwarded.text
        gateway = {"Authorization": f"Bearer {token}"}
        for path, kind, spec in (
            (
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                "SubjectAccessReview",
                {
                    "user": "a",
                    "resourceAttributes": {"verb": "impersonate", "resource": "users", "name": "b"},
                },
            ),
            (
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "TokenReview",
                {"token": "not-a-token"},
            ),
        ):
            review = httpx.post(
                f"{api.url}{path}",
                headers=gateway,
                timeout=10,
                verify=tls,
                json={"apiVersion": path.split("/")[2] + "/v1", "kind": kind, "spec": spec},
            )
            assert review.status_code == 201, (kind, review.text)
