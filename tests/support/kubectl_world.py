"""The integration world: real kubectl and the real npm OpenID Provider, through a real
gateway, to real kube-apiservers (tenants `tenant1` and `tenant2`, one etcd, started once per
session) and to the kubelet stand-in (tenant `standin`: exec, attach, cp, port-forward,
`logs -f`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.fakekube import FakeKube
from tests.support.gateway_thread import GatewayThread
from tests.support.kube import ApiServer, RanAs, audit_id_of
from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA
from tests.support.served import ServedGateway
from tests.support.tenants import (
    STANDIN,
    real_tenants,
    start_standin,
    stop_real_tenants,
    tenant_entries,
)
from tests.support.tiers import tool_missing

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
BASE_DOMAIN = "k8s.test"
#: /usr/bin/kubectl on this machine image is gcloud's dispatcher: it runs the kubectl whose
#: minor matches the server's (1.28 against the real v1.28.7 API servers, through the gateway
#: too). These pin one version, for what only a newer client does (WebSocket exec first).
PINNED_KUBECTL = Path("/usr/lib/google-cloud-sdk/bin")


def pinned_kubectl(minor: str) -> str:
    """The kubectl 1.<minor> binary beside the dispatcher; skips (saying why) without it."""
    path = PINNED_KUBECTL / f"kubectl.1.{minor}"
    if not path.exists():
        tool_missing(f"needs kubectl 1.{minor} at {path} (the machine image's gcloud kubectl)")
    return str(path)


USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["tenant1-admins"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["developers"]},
    "carol": {"email": "carol@example.com", "name": "Carol", "groups": ["tenant2-admins"]},
    "mallory": {"email": "mallory@example.com", "name": "M", "groups": ["nobody"]},
}

POLICIES = {
    "tenant1.yaml": {
        "tenant": "tenant1",
        "roles": {
            "cluster-admin": {"groups": ["oidc:tenant1-admins"]},
            "view": {"groups": ["oidc:developers"], "users": ["oidc:auditor@example.com"]},
        },
    },
    "tenant2.yaml": {
        "tenant": "tenant2",
        "roles": {"cluster-admin": {"groups": ["oidc:tenant2-admins"]}},
    },
    f"{STANDIN}.yaml": {
        "tenant": STANDIN,
        "roles": {
            "cluster-admin": {"groups": ["oidc:tenant1-admins"]},
            "view": {"groups": ["oidc:developers"]},
        },
    },
}


def require_tools() -> None:
    if not Path(KUBECTL).exists():
        tool_missing("kubectl is not installed (the machine image provides /usr/bin/kubectl)")
    if shutil.which("node") is None:
        tool_missing("node is not installed: the OpenID Provider (npm oidc-provider) needs it")


@dataclass
class World:
    dir: Path
    ca: TestCA
    idp: OIDCProvider
    gateway: GatewayThread | ServedGateway
    tenants: dict[str, ApiServer]
    gateway_config: dict = field(default_factory=dict)
    standin: FakeKube | None = None  # the kubelet stand-in's tenant, `STANDIN`

    def token(self, user: str) -> str:
        return self.idp.login(user).id_token

    def ran_as(self, tenant: str, result: subprocess.CompletedProcess, path_part: str) -> RanAs:
        """Who the tenant's API server ran the request of a `kubectl -v=8` run as (the last
        one whose URL has `path_part`), from its audit log."""
        stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
        return self.tenants[tenant].audit.ran_as(audit_id_of(stderr, path_part))

    def server(self, tenant: str, mode: str) -> str:
        if mode == "path":
            return f"{self.gateway.url}/clusters/{tenant}"
        return f"https://{tenant}.{BASE_DOMAIN}:{self.gateway.port}"

    def kubeconfig(self, tenant: str, user: str, mode: str = "path") -> Path:
        path = self.dir / f"kubeconfig-{tenant}-{user}-{mode}"
        if not path.exists():
            path.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [
                            {
                                "name": tenant,
                                "cluster": {
                                    "server": self.server(tenant, mode),
                                    "certificate-authority": str(self.ca.cert_file),
                                },
                            }
                        ],
                        "users": [{"name": user, "user": {"token": self.token(user)}}],
                        "contexts": [
                            {
                                "name": "c",
                                "context": {
                                    "cluster": tenant,
                                    "user": user,
                                    "namespace": "default",
                                },
                            }
                        ],
                        "current-context": "c",
                    }
                )
            )
        return path

    def kubectl_argv(
        self,
        tenant: str,
        user: str,
        args: list[str],
        mode: str = "path",
        kubectl: str = KUBECTL,
    ) -> list[str]:
        argv = [kubectl, "--kubeconfig", str(self.kubeconfig(tenant, user, mode)), *args]
        if mode == "host":
            # no DNS for *.k8s.test: give kubectl its own /etc/hosts in a private mount ns
            hosts = self.dir / "hosts"
            argv = [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'mount --bind {hosts} /etc/hosts && exec "$@"',
                "kubectl-in-ns",
                *argv,
            ]
        return argv

    def kubectl(
        self,
        tenant: str,
        user: str,
        *args: str,
        mode: str = "path",
        input: bytes | None = None,
        env: dict | None = None,
        timeout: float = 30,
        kubectl: str = KUBECTL,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.kubectl_argv(tenant, user, list(args), mode, kubectl),
            input=input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )


def host_mode_available() -> str | None:
    """Why hostname routing cannot be exercised here, or None if it can."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "hostname routing needs root and unshare(1) to give kubectl a private /etc/hosts"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _real_tenants_end_with_the_session() -> Iterator[None]:
    """The shared real tenants (`tests/support/tenants.py`) start on first use."""
    yield
    stop_real_tenants()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_tools()
    real = real_tenants()
    base = tmp_path_factory.mktemp("world")
    ca = TestCA(base / "pki")
    gw_leaf = ca.issue("gateway", ["127.0.0.1", "localhost", BASE_DOMAIN, f"*.{BASE_DOMAIN}"])
    standin = start_standin(ca, base)
    idp = OIDCProvider(base / "idp", users=USERS).start()
    policies = base / "policies"
    policies.mkdir()
    for file, doc in POLICIES.items():
        (policies / file).write_text(yaml.safe_dump(doc))
    (base / "hosts").write_text(
        "127.0.0.1 localhost\n"
        + "".join(f"127.0.0.1 {t}.{BASE_DOMAIN}\n" for t in (*real.servers, STANDIN))
    )
    config = {
        "tls": {"cert_file": str(gw_leaf.cert_file), "key_file": str(gw_leaf.key_file)},
        "routing": {"base_domain": BASE_DOMAIN, "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {
                    "issuer": idp.issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "username_prefix": "oidc:",
                    "groups_claim": "groups",
                    "groups_prefix": "oidc:",
                    "jwks_refresh_min_interval_seconds": 0.5,
                }
            ],
            "jwks_refresh_min_interval_seconds": 0.5,
        },
        "policies": str(policies),
        "audit": {"file": str(base / "audit.log")},
        "tenants": tenant_entries(real, base, standin=standin, ca=ca),
    }
    config["oidc"]["issuers"][0].pop("jwks_refresh_min_interval_seconds")
    gateway = GatewayThread(base / "gateway", config).start()
    world = World(base, ca, idp, gateway, dict(real.servers), config, standin)
    try:
        yield world
    finally:
        gateway.stop()
        idp.stop()
        standin.stop()


def standin(world: World) -> FakeKube:
    """The world's kubelet stand-in."""
    assert world.standin is not None, "this world has no stand-in tenant"
    return world.standin


@pytest.fixture(params=["path", "host"])
def mode(request: pytest.FixtureRequest) -> str:
    """How kubectl addresses the tenant: `/clusters/<tenant>` or `<tenant>.k8s.test`."""
    if request.param == "host":
        why = host_mode_available()
        if why:
            tool_missing(why)
    return request.param


def ok(result: subprocess.CompletedProcess) -> str:
    """kubectl's stdout, after asserting it succeeded."""
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-2000:])
    return result.stdout.decode()


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
