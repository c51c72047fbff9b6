"""Tenant-native tokens against real kube-apiservers: two tenants (two API servers on one
etcd), a ServiceAccount token from `kubectl create token` at tenant A works through vgate at
A only, is reviewed there once (cached, coalesced), runs as the ServiceAccount (A's audit
log says so), and stops working when A deletes the ServiceAccount. OIDC users still go
through the policy and impersonation; and real kubectl backs off on the limit step's 429."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.route_sync import RouteSync
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from gateway.lifecycle.versions import KubernetesVersions
from tests.support import kube
from tests.support.gateway_thread import GatewayThread
from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA

pytestmark = [pytest.mark.slow]

USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["admins"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["admins"]},
}
REVIEWER = """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: vgate-token-reviewer}
rules:
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: vgate-token-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: vgate-token-reviewer}
subjects: [{kind: ServiceAccount, name: vgate, namespace: default}]
"""
ACCOUNT = """apiVersion: v1
kind: ServiceAccount
metadata: {name: NAME, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: configmap-reader, namespace: default}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: NAME-reads-configmaps, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmap-reader}
subjects: [{kind: ServiceAccount, name: NAME, namespace: default}]
"""


def account_token(api: kube.ApiServer, name: str) -> str:
    """A ServiceAccount that may read configmaps in `default`, and a token for it."""
    api.apply(ACCOUNT.replace("NAME", name))
    return api.kubectl("create", "token", name, "-n", "default", "--duration=1h").stdout.strip()


@dataclass
class Lab:
    dir: Path
    ca: TestCA
    a: kube.ApiServer
    b: kube.ApiServer
    idp: OIDCProvider
    gateway: GatewayThread

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_file))

    def url(self, tenant: str, path: str = "/api/v1/namespaces/default/configmaps") -> str:
        return f"{self.gateway.url}/clusters/{tenant}{path}"

    def get(
        self,
        tenant: str,
        token: str,
        path: str = "/api/v1/namespaces/default/configmaps",
        **headers: str,
    ) -> httpx.Response:
        return httpx.get(
            self.url(tenant, path),
            verify=self.tls,
            timeout=20,
            headers={"Authorization": f"Bearer {token}", **headers},
        )

    def kubectl(
        self, tenant: str, token: str, *args: str, env: dict | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = self.dir / f"kubeconfig-{tenant}-{abs(hash(token))}"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": tenant,
                            "cluster": {
                                "server": f"{self.gateway.url}/clusters/{tenant}",
                                "certificate-authority": str(self.ca.cert_file),
                            },
                        }
                    ],
                    "users": [{"name": "u", "user": {"token": token}}],
                    "contexts": [
                        {
                            "name": "c",
                            "context": {"cluster": tenant, "user": "u", "namespace": "default"},
                        }
                    ],
                    "current-context": "c",
                }
            )
        )
        return subprocess.run(
            [kube.KUBECTL, "--kubeconfig", str(config), *args],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, "KUBECACHEDIR": str(self.dir / "cache"), **(env or {})},
        )

    def audit(self) -> list[dict]:
        """The gateway's audit lines (written every 0.2 s)."""
        time.sleep(0.4)
        return [
            json.loads(x) for x in Path(self.gateway.config.audit.file).read_text().splitlines()
        ]

    def reviews(self, api: kube.ApiServer) -> int:
        """TokenReviews the gateway made at `api` (its audit log)."""
        return sum(
            1
            for e in api.audit.matching(verb="create")
            if (e.get("objectRef") or {}).get("resource") == "tokenreviews"
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    kube.require_kube(kubectl=True)
    base = tmp_path_factory.mktemp("tenant-tokens")
    ca = TestCA(base / "pki")
    leaf = ca.issue("gateway", ["127.0.0.1", "localhost"])
    with (
        kube.Etcd(base / "etcd") as etcd,
        kube.ApiServer(base / "tenant-a", etcd) as a,
        kube.ApiServer(base / "tenant-b", etcd) as b,
        OIDCProvider(base / "idp", users=USERS) as idp,
    ):
        tenants = []
        for api in (a, b):
            kube.bind_role_groups(api)
            token = kube.impersonator_token(api)
            api.apply(REVIEWER)
            (base / f"{api.name}.token").write_text(token + "\n")
        for name, api, passthrough in (
            ("tenant-a", a, True),
            ("tenant-b", b, True),
            ("tenant-a-plain", a, False),
        ):
            tenants.append(
                {
                    "name": name,
                    "upstream": api.url,
                    "ca_file": str(api.ca_file),
                    "token_file": str(base / f"{api.name}.token"),
                    "token_passthrough": passthrough,
                }
            )
        (base / "policies").mkdir()
        (base / "policies" / "all.yaml").write_text(
            yaml.safe_dump({"tenant": "*", "roles": {"cluster-admin": {"groups": ["oidc:admins"]}}})
        )
        config = {
            "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
            "routing": {"path_prefix": "/clusters"},
            "oidc": {"issuers": [idp.issuer_entry()]},
            "policies": str(base / "policies"),
            "audit": {"file": str(base / "audit.log")},
            "tenants": tenants,
            "token_review": {"negative_cache_seconds": 30},
            # bob is slowed down at tenant-b (kubectl must back off and still succeed)
            "rate_limits": {
                "tenants": {"tenant-b": {"user": {"requests_per_second": 2, "burst": 2}}}
            },
        }
        with GatewayThread(base / "gateway", config) as gateway:
            yield Lab(base, ca, a, b, idp, gateway)


@pytest.fixture(scope="module")
def ci_token(lab: Lab) -> str:
    return account_token(lab.a, "ci")


def test_kubectl_whoami_shows_the_service_account(lab: Lab, ci_token: str) -> None:
    done = lab.kubectl("tenant-a", ci_token, "auth", "whoami", "-o", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:default:ci"
    assert "system:serviceaccounts:default" in info["groups"]
    assert not any(g.startswith("vgate:") for g in info["groups"])


def test_it_runs_as_the_service_account_at_the_tenant(lab: Lab, ci_token: str) -> None:
    r = lab.get("tenant-a", ci_token)
    assert r.status_code == 200, r.text
    ran = lab.a.audit.ran_as(r.headers["audit-id"])
    assert ran.user == "system:serviceaccount:default:ci"
    assert not ran.impersonated  # its own token, authenticated by the tenant itself
    assert ran.authenticated_as == "system:serviceaccount:default:ci"
    # what it may do is the tenant's RBAC: configmaps yes, secrets no (the tenant's 403)
    denied = lab.get("tenant-a", ci_token, "/api/v1/namespaces/default/secrets")
    assert denied.status_code == 403
    assert "system:serviceaccount:default:ci" in denied.json()["message"]
    line = next(e for e in lab.audit() if e["request_id"] == r.headers["audit-id"])
    assert line["user"] == "system:serviceaccount:default:ci"
    assert line["issuer"] == "tokenreview:tenant-a" and line["roles"] == []


def test_a_token_of_tenant_a_is_refused_at_b_and_where_passthrough_is_off(
    lab: Lab, ci_token: str
) -> None:
    before = lab.reviews(lab.a)
    for tenant in ("tenant-b", "tenant-a-plain"):
        r = lab.get(tenant, ci_token)
        assert r.status_code == 401, (tenant, r.text)
        assert r.json()["kind"] == "Status" and r.json()["reason"] == "Unauthorized"
    assert lab.reviews(lab.a) == before  # B's own review refused it; A was not asked
    done = lab.kubectl("tenant-b", ci_token, "get", "configmaps")
    assert done.returncode != 0 and "must be logged in" in done.stderr


def test_reviews_are_cached_and_coalesced(lab: Lab) -> None:
    token = account_token(lab.a, "bot")
    before = lab.reviews(lab.a)
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: lab.get("tenant-a", token).status_code, range(10)))
    codes += [lab.get("tenant-a", token).status_code for _ in range(5)]
    assert set(codes) == {200}
    assert lab.reviews(lab.a) - before == 1  # 15 requests, one review


def test_rejections_are_cached_briefly_and_foreign_jwts_never_reviewed(lab: Lab) -> None:
    before = lab.reviews(lab.a)
    for _ in range(3):
        assert lab.get("tenant-a", "not-a-jwt-at-all").status_code == 401
    assert lab.reviews(lab.a) - before == 1
    foreign = jwt.encode({"iss": "https://ci.example.com", "sub": "x"}, "k" * 32)
    assert lab.get("tenant-a", foreign).status_code == 401
    assert lab.reviews(lab.a) - before == 1


def test_oidc_tokens_never_reach_the_token_review(lab: Lab) -> None:
    before = lab.reviews(lab.a)
    token = lab.idp.login("alice").id_token
    r = lab.get("tenant-a", token)
    assert r.status_code == 200, r.text
    ran = lab.a.audit.ran_as(r.headers["audit-id"])
    assert ran.impersonated and ran.user == "oidc:alice@example.com"
    assert "vgate:cluster-admin" in ran.groups
    assert lab.reviews(lab.a) == before


def test_kubectl_as_with_a_tenant_token_is_refused(lab: Lab, ci_token: str) -> None:
    r = lab.get("tenant-a", ci_token, **{"Impersonate-User": "admin"})
    assert r.status_code == 403 and "impersonation" in r.json()["message"]


def test_a_deleted_service_account_stops_with_the_tenant(lab: Lab) -> None:
    """The gateway still has the review cached (300 s), but the token itself goes upstream:
    it stops working as soon as the tenant's API server refuses it (its own token cache
    keeps an answer 10 s)."""
    token = account_token(lab.a, "gone")
    assert lab.get("tenant-a", token).status_code == 200
    lab.a.kubectl("delete", "serviceaccount", "gone", "-n", "default")
    deadline = time.monotonic() + 20
    while (r := lab.get("tenant-a", token)).status_code == 200:
        assert time.monotonic() < deadline, "the deleted ServiceAccount still works"
        time.sleep(0.5)
    assert r.status_code == 401, r.text
    line = next(e for e in lab.audit() if e["request_id"] == r.headers["audit-id"])
    assert line["decision"] == "allow"  # the gateway's cached review let it through:
    assert line["status"] == 401  # the tenant itself refused it


def test_kubectl_backs_off_on_429_and_succeeds(lab: Lab) -> None:
    """bob may make 2 requests per second at tenant-b; kubectl's discovery and list need
    more: client-go waits out Retry-After and retries, and every command succeeds."""
    token = lab.idp.login("bob").id_token
    logs = ""
    for i in range(3):  # no discovery cache: each run asks /api, /apis, then lists
        done = lab.kubectl(
            "tenant-b",
            token,
            "get",
            "configmaps",
            "-v=6",
            env={"KUBECACHEDIR": str(lab.dir / f"cache-bob-{i}")},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        logs += done.stderr
    assert "429 Too Many Requests" in logs
    limited = [
        e for e in lab.audit() if e["decision"] == "limited" and e["user"] == "oidc:bob@example.com"
    ]
    assert limited and all(e["status"] == 429 and e["tenant"] == "tenant-b" for e in limited)


class _ExistingCluster:
    """The provisioner's part, for a tenant whose cluster already runs (API server A): no
    steps, the route to A. What is tested is the rest: the spec's switch, the reconciler's
    route, the store, the route sync, the gateway's review at the real API server."""

    kind = "existing"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def up(self, spec: TenantSpec) -> list:
        return []

    pause = down = up

    def route(self, spec: TenantSpec) -> RouteInfo:
        return RouteInfo(
            server=self.lab.a.url,
            ca_file=str(self.lab.a.ca_file),
            token_file=str(self.lab.dir / f"{self.lab.a.name}.token"),
        )

    def versions(self) -> KubernetesVersions:
        raise NotImplementedError

    async def served_version(self, spec: TenantSpec) -> str:
        return "v1.28.7"


def test_a_lifecycle_tenant_with_token_passthrough(lab: Lab, ci_token: str) -> None:
    """`token_passthrough` in a lifecycle tenant's spec reaches the gateway's route: the
    ServiceAccount token of A works at a lifecycle tenant on A that has it (the review made
    at A), is refused at one that has not, and stops once it is switched off."""
    store = SQLiteTenantStore(lab.dir / "lifecycle.db")
    operations = TenantOperations(store)
    reconciler = Reconciler(store, _ExistingCluster(lab))  # type: ignore[arg-type]
    gateway = lab.gateway.gateway

    async def create_both() -> None:
        await operations.create(
            TenantSpec(name="life-a", admin_groups=["oidc:admins"], token_passthrough=True)
        )
        await operations.create(TenantSpec(name="life-plain", admin_groups=["oidc:admins"]))
        assert await reconciler.reconcile("life-a") and await reconciler.reconcile("life-plain")

    asyncio.run(create_both())
    route = asyncio.run(store.get("life-a")).status.route
    assert route is not None and route.token_passthrough
    sync = RouteSync(store, gateway.registry, on_roles=gateway.policy.set_stored_roles)
    asyncio.run_coroutine_threadsafe(sync.sync_once(force=True), lab.gateway.loop).result(10)
    try:
        r = lab.get("life-a", ci_token)
        assert r.status_code == 200, r.text
        assert lab.a.audit.ran_as(r.headers["audit-id"]).authenticated_as == (
            "system:serviceaccount:default:ci"
        )
        line = next(e for e in lab.audit() if e["request_id"] == r.headers["audit-id"])
        assert line["issuer"] == "tokenreview:life-a"
        assert lab.get("life-plain", ci_token).status_code == 401

        async def switch_off() -> None:
            await operations.set_token_passthrough("life-a", False)
            assert await reconciler.reconcile("life-a")

        asyncio.run(switch_off())
        asyncio.run_coroutine_threadsafe(sync.sync_once(force=True), lab.gateway.loop).result(10)
        r = lab.get("life-a", ci_token)
        assert r.status_code == 401, r.text
    finally:
        for name in ("life-a", "life-plain"):
            gateway.registry.remove(name)
        gateway.registry.set_states({})
        asyncio.run(store.close())
