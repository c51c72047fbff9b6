"""Group overage end to end: tokens from the real IdP that carry Entra ID's overage marker
instead of groups, groups from the real Samba AD DC, a real kube-apiserver as the tenant.
The directory's groups stand in for the missing claim (policy rules on token groups match),
only overage tokens are looked up (`lookup: overage`), and only the groups the policy names
leave the gateway."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import generate_latest

from tests.support import kube
from tests.support.directory.corp import Corp
from tests.support.directory.samba import SERVICE_DN
from tests.support.gateway_thread import GatewayThread
from tests.support.kubectl_world import require_tools
from tests.support.oidc import OIDCProvider

pytestmark = [pytest.mark.slow]

USERS = {
    # erin is in 320 groups: the IdP names a claim source instead of listing them
    "erin": {"email": "erin@corp.example.com", "groups_overage": "claim_sources"},
    # alice (nested: sre-oncall ∈ platform-admins ∈ k8s-tenant1-admins): `hasgroups: true`
    "alice": {"email": "alice@corp.example.com", "groups_overage": "hasgroups"},
    # bob's token lists his groups: the directory is not asked
    "bob": {"email": "bob@corp.example.com", "groups": ["developers"]},
}
POLICY = {
    "tenant": "corp",
    "roles": {
        "view": {"groups": ["oidc:bulk-319", "oidc:developers"]},
        "cluster-admin": {"groups": ["oidc:platform-admins"]},
    },
    "forward_groups": {"mode": "referenced"},
}


@dataclass
class World:
    dir: Path
    corp: Corp
    api: kube.ApiServer
    idp: OIDCProvider
    gateway: GatewayThread
    tls: ssl.SSLContext

    def get(self, user: str) -> httpx.Response:
        return httpx.get(
            f"{self.gateway.url}/clusters/corp/api/v1/namespaces/default/pods",
            headers={"Authorization": f"Bearer {self.idp.login(user).id_token}"},
            verify=self.tls,
            timeout=20,
        )

    def kubectl(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        config = self.dir / f"kubeconfig-{user}"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "corp",
                            "cluster": {
                                "server": f"{self.gateway.url}/clusters/corp",
                                "certificate-authority": str(self.corp.ca.cert_file),
                            },
                        }
                    ],
                    "users": [{"name": user, "user": {"token": self.idp.login(user).id_token}}],
                    "contexts": [{"name": "c", "context": {"cluster": "corp", "user": user}}],
                    "current-context": "c",
                }
            )
        )
        return subprocess.run(
            [kube.KUBECTL, "--kubeconfig", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KUBECACHEDIR": str(self.dir / "cache")},
        )

    def audit(self, request_id: str) -> dict:
        time.sleep(0.4)
        return next(
            json.loads(x)
            for x in Path(self.gateway.config.audit.file).read_text().splitlines()
            if request_id in x
        )

    def lookups(self) -> float:
        text = generate_latest(self.gateway.gateway.recorder.metrics.registry).decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("vgate_directory_lookups_total{")
        )


@pytest.fixture(scope="module")
def world(corp: Corp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools()
    kube.require_kube(kubectl=True)
    base = tmp_path_factory.mktemp("overage")
    leaf = corp.ca.issue("gateway", ["127.0.0.1", "localhost"])
    (base / "policies").mkdir()
    (base / "policies" / "corp.yaml").write_text(yaml.safe_dump(POLICY))
    with (
        kube.Etcd(base / "etcd") as etcd,
        kube.ApiServer(base / "corp", etcd) as api,
        OIDCProvider(base / "idp", users=USERS) as idp,
    ):
        kube.bind_role_groups(api)
        (base / "gateway.token").write_text(kube.impersonator_token(api) + "\n")
        config = {
            "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
            "routing": {"path_prefix": "/clusters"},
            "oidc": {"issuers": [{**idp.issuer_entry(), "overage_group_names": "name"}]},
            "policies": str(base / "policies"),
            "audit": {"file": str(base / "audit.log")},
            "tenants": [
                {
                    "name": "corp",
                    "upstream": api.url,
                    "ca_file": str(api.ca_file),
                    "token_file": str(base / "gateway.token"),
                }
            ],
            "ldap": {
                "urls": [corp.dc.ldap_url],
                "tls": "starttls",
                "ca_file": str(corp.ca.cert_file),
                "bind_dn": SERVICE_DN,
                "bind_password_file": str(corp.password_file()),
                "user_base_dn": "OU=People,DC=corp,DC=example,DC=com",
                "user_attribute": "userPrincipalName",
                "user_claim": "email",
                "group_base_dn": "DC=corp,DC=example,DC=com",
                "lookup": "overage",
                "flush_file": str(base / "directory.flush"),
            },
        }
        with GatewayThread(base / "gateway", config) as gateway:
            yield World(
                base,
                corp,
                api,
                idp,
                gateway,
                ssl.create_default_context(cafile=str(corp.ca.cert_file)),
            )


def test_overage_groups_come_from_the_directory(world: World) -> None:
    done = world.kubectl("erin", "auth", "whoami", "-o", "json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)["status"]["userInfo"]
    assert info["username"] == "oidc:erin@corp.example.com"
    # the view rule names oidc:bulk-319, a group only the directory knows erin is in; of
    # her 300-odd groups only that one is referenced by the policy, so only it leaves
    assert sorted(g for g in info["groups"] if g != "system:authenticated") == [
        "oidc:bulk-319",
        "vgate:view",
    ]
    r = world.get("erin")
    assert r.status_code == 200, r.text
    ran = world.api.audit.ran_as(r.headers["audit-id"])
    assert ran.impersonated and "oidc:bulk-319" in ran.groups
    line = world.audit(r.headers["audit-id"])
    assert line["directory_user"].startswith("CN=erin,")
    assert line["groups_dropped"] > 600  # 320+ as names, 320+ as directory groups


def test_hasgroups_is_overage_too_nested_groups_count(world: World) -> None:
    r = world.get("alice")
    assert r.status_code == 200, r.text
    ran = world.api.audit.ran_as(r.headers["audit-id"])
    assert "vgate:cluster-admin" in ran.groups and "oidc:platform-admins" in ran.groups


def test_tokens_that_list_their_groups_are_not_looked_up(world: World) -> None:
    before = world.lookups()
    r = world.get("bob")
    assert r.status_code == 200, r.text
    assert world.lookups() == before
    assert world.audit(r.headers["audit-id"]).get("directory_user") is None
