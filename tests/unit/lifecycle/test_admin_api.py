"""The admin API over httpx.ASGITransport with an injected authenticator."""

from __future__ import annotations

import httpx
import pytest

from gateway.identity import Identity
from gateway.lifecycle.admin_api import admin_app, platform_admin_check
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.vcluster_values import VCLUSTER_VERSIONS
from gateway.lifecycle.stores.protocol import StoreError
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore

TOKENS = {
    "admin-token": Identity("alice@corp", "u1", ("platform-admins",), "https://idp", 0.0),
    "dev-token": Identity("bob@corp", "u2", ("developers",), "https://idp", 0.0),
}


async def authenticate(token: str) -> Identity:
    try:
        return TOKENS[token]
    except KeyError:
        raise ValueError("bad token") from None


@pytest.fixture
async def api(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    app = admin_app(
        TenantOperations(store, static_tenants=["static1"], versions=lambda: VCLUSTER_VERSIONS),
        authenticate=authenticate,
        is_platform_admin=platform_admin_check(["platform-admins"], []),
        path_prefix="/clusters",
        public_url="https://vgate.example.com",
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://vgate",
        headers={"Authorization": "Bearer admin-token"},
    ) as client:
        yield client, store
    await store.close()


async def test_only_platform_admins_get_in(api):
    client, _ = api
    r = await client.get("/admin/tenants", headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="vgate"'
    r = await client.get("/admin/tenants", headers={"Authorization": "Bearer forged"})
    assert r.status_code == 401 and r.json()["kind"] == "Status"
    r = await client.get("/admin/tenants", headers={"Authorization": "Bearer dev-token"})
    assert r.status_code == 403
    assert r.json()["message"] == 'user "bob@corp" is not a platform administrator'
    r = await client.post(
        "/admin/tenants",
        json={"name": "t1", "admin_groups": ["a"]},
        headers={"Authorization": "Bearer dev-token"},
    )
    assert r.status_code == 403


async def test_lifecycle_of_a_tenant_through_the_api(api):
    client, store = api
    r = await client.post(
        "/admin/tenants", json={"name": "t1", "admin_groups": ["admins"], "k8s_version": "1.31"}
    )
    assert r.status_code == 201, r.text
    assert r.json()["phase"] == "Pending"
    assert r.json()["servers"] == ["https://vgate.example.com/clusters/t1"]
    r = await client.post("/admin/tenants", json={"name": "t1", "admin_groups": ["admins"]})
    assert (r.status_code, r.json()["message"]) == (409, 'tenant "t1" already exists')
    assert [t["name"] for t in (await client.get("/admin/tenants")).json()["items"]] == ["t1"]
    r = await client.post("/admin/tenants/t1/pause")
    assert r.json()["desired"] == "paused"
    r = await client.post("/admin/tenants/t1/resume")
    assert r.json()["desired"] == "running"
    r = await client.post("/admin/tenants/t1/upgrade", json={"k8s_version": "1.32"})
    assert r.json()["k8s_version"] == "1.32"
    r = await client.post("/admin/tenants/t1/upgrade", json={"k8s_version": "1.31"})
    assert r.status_code == 409 and "downgrades" in r.json()["message"]
    r = await client.post("/admin/tenants/t1/upgrade", json={"k8s_version": "1.99"})
    assert r.status_code == 422
    cause = r.json()["details"]["causes"][0]
    assert cause["field"] == "k8s_version"
    assert cause["message"].startswith(
        "Kubernetes 1.99 is not available here (available: 1.30 (image tag v1.30.13), 1.31"
    )
    r = await client.delete("/admin/tenants/t1")
    assert r.status_code == 202 and r.json()["desired"] == "deleted"
    r = await client.post("/admin/tenants/t1/resume")
    assert r.status_code == 409 and r.json()["message"] == 'tenant "t1" is being deleted'
    assert (await store.get("t1")).spec.desired.value == "deleted"


async def test_errors_name_the_field_and_missing_tenants_are_404(api):
    client, _ = api
    r = await client.post(
        "/admin/tenants", json={"name": "Bad", "admin_groups": [], "quota": {"cpu": "lots"}}
    )
    assert r.status_code == 422
    fields = {c["field"] for c in r.json()["details"]["causes"]}
    assert fields == {"name", "admin_groups", "quota"}
    r = await client.post("/admin/tenants", json={"name": "static1", "admin_groups": ["a"]})
    assert r.status_code == 409 and "configured statically" in r.json()["message"]
    r = await client.post("/admin/tenants", content=b"{nope")
    assert r.status_code == 400
    for method, path in (
        ("GET", "/admin/tenants/ghost"),
        ("DELETE", "/admin/tenants/ghost"),
        ("POST", "/admin/tenants/ghost/pause"),
    ):
        r = await client.request(method, path)
        assert (r.status_code, r.json()["message"]) == (404, 'tenant "ghost" not found')


async def test_every_error_is_a_status(api):
    """JSON nested deeper than the parser recurses (well within the size bound), a path
    the API does not have and a method a path does not take are `Status` bodies with
    their code, not a bare 500 or text."""
    client, _ = api
    deep = b"[" * 100_000 + b"]" * 100_000
    for method, path, content, code in (
        ("POST", "/admin/tenants", deep, 400),
        ("POST", "/admin/tenants/t1/upgrade", deep, 400),
        ("GET", "/admin/nothing", None, 404),
        ("PUT", "/admin/tenants/t1", None, 405),
    ):
        r = await client.request(method, path, content=content)
        assert r.status_code == code, (path, r.text)
        status = r.json()
        assert status["kind"] == "Status" and status["code"] == code, status
        assert status["message"], status
    assert "allow" in {k.lower() for k in r.headers}  # the 405 says what the path takes


class FailingStore(SQLiteTenantStore):
    """A store whose host cluster refuses writes, and whose listing has a bug."""

    async def create(self, spec):
        raise StoreError(f"cannot create Tenant {spec.name!r}: quota exceeded")

    async def list(self):
        raise RuntimeError("a bug: /secret/path/in/traceback")


async def test_a_failing_store_is_a_status(tmp_path, caplog):
    """A store that fails (the host cluster refuses or cannot be reached) is a 503 Status
    saying so, and any other failure a 500 Status without its details (they go to the
    log): both were a bare text/plain 500 from the bridge."""
    store = FailingStore(tmp_path / "t.db")
    app = admin_app(
        TenantOperations(store, static_tenants=[], versions=lambda: VCLUSTER_VERSIONS),
        authenticate=authenticate,
        is_platform_admin=platform_admin_check(["platform-admins"], []),
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://vgate",
        headers={"Authorization": "Bearer admin-token"},
    ) as client:
        r = await client.post("/admin/tenants", json={"name": "t1", "admin_groups": ["g"]})
        assert r.status_code == 503, r.text
        assert r.json()["kind"] == "Status" and "quota exceeded" in r.json()["message"]
        r = await client.get("/admin/tenants")
        assert r.status_code == 500, r.text
        assert r.json()["kind"] == "Status" and "secret" not in r.text
    await store.close()
    assert any("a bug" in (rec.exc_text or "") for rec in caplog.records)


def test_hostname_server_uses_the_public_scheme_and_port():
    from gateway.lifecycle.model import TenantRecord, TenantSpec, TenantStatus
    from gateway.lifecycle.operations import describe

    record = TenantRecord(
        spec=TenantSpec(name="t1", admin_groups=["a"]),
        status=TenantStatus(hostname="t1.k8s.example.com"),
    )
    shown = describe(record, path_prefix="/clusters", public_url="https://vgate.example.com:8443")
    assert shown["servers"] == [
        "https://t1.k8s.example.com:8443",
        "https://vgate.example.com:8443/clusters/t1",
    ]
    assert describe(record)["servers"] == ["https://t1.k8s.example.com"]


async def test_token_passthrough_through_the_api(api):
    """Set at creation or later, with or without the issuer; an issuer without passthrough
    or with spaces is a 422 naming the field."""
    client, store = api
    r = await client.post(
        "/admin/tenants", json={"name": "t1", "admin_groups": ["a"], "token_passthrough": True}
    )
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["token_passthrough"] is True
    assert r.json()["spec"]["service_account_issuer"] is None
    r = await client.post(
        "/admin/tenants",
        json={"name": "t2", "admin_groups": ["a"], "service_account_issuer": "https://k"},
    )
    assert r.status_code == 422
    assert [(c["field"], c["message"]) for c in r.json()["details"]["causes"]] == [
        ("service_account_issuer", "applies only with token_passthrough")
    ]
    issuer = "https://kubernetes.default.svc.cluster.local"
    r = await client.post(
        "/admin/tenants/t1/token-passthrough",
        json={"token_passthrough": True, "service_account_issuer": issuer},
    )
    assert r.status_code == 200, r.text
    spec = (await store.get("t1")).spec
    assert (spec.token_passthrough, spec.service_account_issuer) == (True, issuer)
    assert r.json()["generation"] == 2  # a spec change the reconciler picks up
    r = await client.post(
        "/admin/tenants/t1/token-passthrough",
        json={"token_passthrough": True, "service_account_issuer": "two words"},
    )
    assert r.status_code == 422
    assert r.json()["details"]["causes"][0]["field"] == "service_account_issuer"
    r = await client.post("/admin/tenants/t1/token-passthrough", json={"token_passthrough": "yes"})
    assert r.status_code == 422
    r = await client.post("/admin/tenants/t1/token-passthrough", json={"token_passthrough": False})
    assert r.status_code == 200
    spec = (await store.get("t1")).spec
    assert (spec.token_passthrough, spec.service_account_issuer) == (False, None)
    r = await client.post(
        "/admin/tenants/ghost/token-passthrough", json={"token_passthrough": True}
    )
    assert r.status_code == 404


async def test_a_tenant_stored_by_a_newer_version_is_a_500_status_saying_so(api):
    """Reading a record this version cannot read answers as kube-apiserver answers an
    object it cannot decode (500 InternalError, the reason in the message); the listing
    leaves it out instead of failing for everyone."""
    import json
    import sqlite3

    client, store = api
    for name in ("t1", "t2"):
        assert (
            await client.post("/admin/tenants", json={"name": name, "admin_groups": ["a"]})
        ).is_success
    with sqlite3.connect(store.path) as db:
        (stored,) = db.execute("SELECT spec FROM tenants WHERE name = 't2'").fetchone()
        spec = {**json.loads(stored), "deny_groups": ["contractors"]}
        db.execute("UPDATE tenants SET spec = ? WHERE name = 't2'", (json.dumps(spec),))
    r = await client.get("/admin/tenants/t2")
    assert r.status_code == 500 and r.json()["reason"] == "InternalError"
    assert "deny_groups" in r.json()["message"] and "newer version" in r.json()["message"]
    r = await client.get("/admin/tenants")
    assert r.status_code == 200
    assert "t2" not in json.dumps(r.json()) and "t1" in json.dumps(r.json())


async def test_a_store_that_fails_is_a_503_status_to_retry(api):
    """The store locked by another process (or full, or the host API down): a Kubernetes
    `Status` 503 with `Retry-After` and the store's reason, not a bare text 500."""
    import sqlite3

    client, store = api
    store._db.execute("PRAGMA busy_timeout=100")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        r = await client.post("/admin/tenants", json={"name": "t1", "admin_groups": ["a"]})
    finally:
        other.rollback()
        other.close()
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["kind"] == "Status" and r.json()["reason"] == "ServiceUnavailable"
    assert "database is locked" in r.json()["message"]
    r = await client.post("/admin/tenants", json={"name": "t1", "admin_groups": ["a"]})
    assert r.status_code == 201
