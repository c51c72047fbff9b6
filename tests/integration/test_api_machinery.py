"""The API machinery of a real kube-apiserver through the gateway, untouched: protobuf,
Table and aggregated-discovery content negotiation, gzip, repeated `Warning` headers, the
server's own `Status` errors, CRDs, Leases, TokenRequest — and its RBAC for each."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.kubectl_world import World, ok

PROTOBUF = "application/vnd.kubernetes.protobuf"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
DISCOVERY = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"


def client(world: World, user: str, tenant: str = "tenant1") -> httpx.Client:
    return httpx.Client(
        base_url=world.server(tenant, "path"),
        timeout=30,
        headers={"Authorization": f"Bearer {world.token(user)}"},
        verify=ssl.create_default_context(cafile=str(world.ca.cert_file)),
    )


def direct(world: World, tenant: str = "tenant1") -> httpx.Client:
    """The tenant's API server as its admin, not through the gateway."""
    api = world.tenants[tenant]
    from tests.support.kube import ADMIN_TOKEN

    return httpx.Client(
        base_url=api.url,
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        verify=ssl.create_default_context(cafile=str(api.ca_file)),
    )


@pytest.fixture(scope="module")
def alice(world: World) -> Iterator[httpx.Client]:
    with client(world, "alice") as c:
        yield c


def test_content_negotiation_passes_through(alice: httpx.Client) -> None:
    pod = "/api/v1/namespaces/default/pods/web-0"
    proto = alice.get(pod, headers={"Accept": PROTOBUF})
    assert proto.status_code == 200
    assert proto.headers["content-type"] == PROTOBUF
    assert proto.content.startswith(b"k8s\x00"), proto.content[:16]
    table = alice.get("/api/v1/namespaces/default/pods", headers={"Accept": TABLE})
    assert table.json()["kind"] == "Table"
    assert [r["cells"][0] for r in table.json()["rows"]] == ["web-0"]
    groups = alice.get("/apis", headers={"Accept": DISCOVERY})
    assert groups.json()["kind"] == "APIGroupDiscoveryList"
    assert "as=APIGroupDiscoveryList" in groups.headers["content-type"]
    # the API server compresses big answers itself; the gateway relays them as they are
    spec = alice.get("/openapi/v2", headers={"Accept-Encoding": "gzip"})
    assert spec.status_code == 200 and spec.headers["content-encoding"] == "gzip"
    assert spec.json()["swagger"] == "2.0"


def test_repeated_warning_headers_reach_the_client(alice: httpx.Client) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "warned", "bogusOne": 1, "bogusTwo": 2},
    }
    r = alice.post(
        "/api/v1/namespaces/default/configmaps",
        params={"fieldValidation": "Warn", "dryRun": "All"},
        json=body,
    )
    assert r.status_code == 201, r.text
    warnings = r.headers.get_list("warning")
    assert len(warnings) == 2, warnings
    assert all(w.startswith('299 - "unknown field \\"metadata.bogus') for w in warnings)


def test_status_errors_are_the_servers_own(world: World, alice: httpx.Client) -> None:
    name = f"status-{time.monotonic_ns()}"
    cms = "/api/v1/namespaces/default/configmaps"
    with direct(world) as admin:
        missing = alice.get(f"{cms}/{name}")
        assert missing.status_code == 404
        assert missing.json() == admin.get(f"{cms}/{name}").json(), "the server's Status"
        assert missing.json()["reason"] == "NotFound"
        assert missing.json()["details"] == {"name": name, "kind": "configmaps"}
    made = alice.post(cms, json={"metadata": {"name": name}, "data": {"a": "1"}})
    assert made.status_code == 201
    again = alice.post(cms, json={"metadata": {"name": name}})
    assert (again.status_code, again.json()["reason"]) == (409, "AlreadyExists")
    stale = made.json()
    assert alice.put(f"{cms}/{name}", json={**stale, "data": {"a": "2"}}).status_code == 200
    conflict = alice.put(f"{cms}/{name}", json={**stale, "data": {"a": "3"}})
    assert (conflict.status_code, conflict.json()["reason"]) == (409, "Conflict")
    invalid = alice.post(cms, json={"metadata": {"name": "Not_A_Name"}})
    assert (invalid.status_code, invalid.json()["reason"]) == (422, "Invalid")
    assert invalid.json()["details"]["causes"][0]["field"] == "metadata.name"
    assert alice.delete(f"{cms}/{name}").status_code == 200


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                        },
                    }
                },
            }
        ],
    },
}


def test_custom_resources_and_real_rbac(world: World) -> None:
    manifest = json.dumps(CRD).encode()
    ok(world.kubectl("tenant1", "alice", "apply", "-f", "-", input=manifest))
    try:
        ok(
            world.kubectl(
                "tenant1",
                "alice",
                "wait",
                "--for=condition=Established",
                "crd/widgets.example.com",
                "--timeout=30s",
            )
        )
        widget = {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": "default"},
            "spec": {"size": 3},
        }
        ok(
            world.kubectl(
                "tenant1",
                "alice",
                "apply",
                "--server-side",
                "-f",
                "-",
                input=json.dumps(widget).encode(),
            )
        )
        got = json.loads(
            ok(world.kubectl("tenant1", "alice", "get", "widgets", "w1", "-o", "json"))
        )
        assert got["spec"] == {"size": 3}
        # the view role in this cluster covers the core, apps and batch groups only
        viewer = world.kubectl("tenant1", "bob", "get", "widgets")
        assert viewer.returncode != 0
        assert b'cannot list resource "widgets" in API group "example.com"' in viewer.stderr
    finally:
        ok(world.kubectl("tenant1", "alice", "delete", "crd", "widgets.example.com"))


def test_lease_updates_are_optimistic(alice: httpx.Client) -> None:
    leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    name = f"leader-{time.monotonic_ns()}"
    made = alice.post(
        leases,
        json={
            "metadata": {"name": name},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        },
    )
    assert made.status_code == 201, made.text
    lease = made.json()
    first = alice.put(f"{leases}/{name}", json={**lease, "spec": {"holderIdentity": "b"}})
    second = alice.put(f"{leases}/{name}", json={**lease, "spec": {"holderIdentity": "c"}})
    assert first.status_code == 200 and second.status_code == 409
    assert alice.get(f"{leases}/{name}").json()["spec"]["holderIdentity"] == "b"
    assert alice.delete(f"{leases}/{name}").status_code == 200


def test_token_request_through_the_gateway(world: World) -> None:
    token = ok(
        world.kubectl("tenant1", "alice", "create", "token", "default", "--duration=10m")
    ).strip()
    api = world.tenants["tenant1"]
    with httpx.Client(
        base_url=api.url,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(api.ca_file)),
    ) as c:
        review = c.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
    assert (
        review.json()["status"]["userInfo"]["username"] == "system:serviceaccount:default:default"
    ), "a real token of the tenant's API server"
    viewer = world.kubectl("tenant1", "bob", "create", "token", "default")
    assert viewer.returncode != 0
    assert b'cannot create resource "serviceaccounts/token"' in viewer.stderr
