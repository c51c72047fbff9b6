"""A gateway with the SSO portal, the real dev IdP, the session's two real kube-apiservers
as tenants (`tests/support/tenants.py`), and the pieces that let real kubectl run `vgate
login` as its exec plugin (a `vgate` command on PATH and a scripted browser user)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.gateway_thread import GatewayThread
from tests.support.kube import ApiServer
from tests.support.oidc import OIDCProvider, free_port
from tests.support.pki import TestCA
from tests.support.tenants import real_tenants, tenant_entries
from tests.support.tiers import tool_missing

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
BASE_DOMAIN = "k8s.test"

USERS = {
    "alice": {
        "email": "alice@example.com",
        "name": "Alice",
        "groups": ["tenant1-admins"],
        "password": "alice-pw",
    },
    "bob": {
        "email": "bob@example.com",
        "name": "Bob",
        "groups": ["developers"],
        "password": "bob-pw",
    },
    "carol": {
        "email": "carol@example.com",
        "name": "Carol",
        "groups": ["tenant2-admins", "developers"],
        "password": "carol-pw",
    },
    "mallory": {
        "email": "mallory@example.com",
        "name": "M",
        "groups": ["nobody"],
        "password": "mallory-pw",
    },
}

POLICIES = {
    "tenant1.yaml": {
        "tenant": "tenant1",
        "roles": {
            "cluster-admin": {"groups": ["oidc:tenant1-admins"]},
            "view": {"groups": ["oidc:developers"]},
        },
    },
    "tenant2.yaml": {
        "tenant": "tenant2",
        "roles": {
            "cluster-admin": {"groups": ["oidc:tenant2-admins"]},
        },
    },
}


def missing_tools() -> str | None:
    """Why this world cannot be built here, or None."""
    if not Path(KUBECTL).exists():
        return "kubectl is not installed (/usr/bin/kubectl)"
    if shutil.which("node") is None:
        return "node is not installed: the OpenID Provider (npm oidc-provider) needs it"
    return None


@dataclass
class SSOWorld:
    dir: Path
    ca: TestCA
    idp: OIDCProvider
    gateway: GatewayThread
    tenants: dict[str, ApiServer]  # shared with the session's other worlds
    bin_dir: Path
    browser_log: Path

    @property
    def url(self) -> str:
        return self.gateway.url

    def plugin_env(
        self, user: str = "alice", *, mode: str = "login", cache: Path | None = None, **extra: str
    ) -> dict[str, str]:
        """Environment for kubectl (and so for `vgate login`) acting as `user`."""
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO_ROOT),
            "BROWSER": str(self.bin_dir / "test-browser"),
            "VGATE_TEST_USER": user,
            "VGATE_TEST_PASSWORD": USERS[user]["password"],
            "VGATE_TEST_BROWSER_MODE": mode,
            "VGATE_TEST_BROWSER_LOG": str(self.browser_log),
            "VGATE_CACHE_DIR": str(cache or self.dir / "cache"),
            "VGATE_LOGIN_PORTS": "0",
            "DISPLAY": "",
            "WAYLAND_DISPLAY": "",
            **extra,
        }

    def browser_runs(self) -> int:
        return len(self.browser_log.read_text().splitlines()) if self.browser_log.exists() else 0

    def vgate(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env or self.plugin_env(),
            input=input,
        )

    def kubectl(
        self, kubeconfig: Path, *args: str, env: dict[str, str], timeout: float = 60
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def stop(self) -> None:
        self.gateway.stop()
        self.idp.stop()


def plugin_commands(bin_dir: Path) -> Path:
    """`bin_dir` with `vgate` (this checkout) and `test-browser` (a scripted user), for PATH
    and $BROWSER of a kubectl that runs `vgate login`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, module in (("vgate", "gateway"), ("test-browser", "tests.support.browser_user")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    return bin_dir


def running(base: Path) -> Iterator[SSOWorld]:
    """A world for a module-scoped fixture: skips (saying why) when a tool is missing, is
    stopped when the module is done."""
    why = missing_tools()
    if why:
        tool_missing(why)
    world = build(base)
    try:
        yield world
    finally:
        world.stop()


def build(base: Path, *, idp_ttl: dict | None = None) -> SSOWorld:
    real = real_tenants()
    ca = TestCA(base / "pki")
    gw_leaf = ca.issue("gateway", ["127.0.0.1", "localhost", BASE_DOMAIN, f"*.{BASE_DOMAIN}"])
    port = free_port()
    public_url = f"https://127.0.0.1:{port}"
    idp = OIDCProvider(
        base / "idp",
        users=USERS,
        ttl=idp_ttl,
        portal_redirect_uris=[f"{public_url}/oauth2/callback"],
    ).start()
    policies = base / "policies"
    policies.mkdir()
    for file, doc in POLICIES.items():
        (policies / file).write_text(yaml.safe_dump(doc))
    (base / "portal-client-secret").write_text(idp.portal_client_secret + "\n")
    (base / "cookie-secret").write_text(secrets.token_urlsafe(48) + "\n")
    config = {
        "listen": {"host": "127.0.0.1", "port": port, "metrics_port": 0},
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
                }
            ]
        },
        "policies": str(policies),
        "audit": {"file": str(base / "audit.log")},
        "tenants": tenant_entries(real, base),
        "portal": {
            "issuer": idp.issuer,
            "client_id": idp.portal_client_id,
            "client_secret_file": str(base / "portal-client-secret"),
            "public_url": public_url,
            "cookie_secret_file": str(base / "cookie-secret"),
            "ca_file": str(ca.cert_file),
            "cli_client_id": idp.client_id,
            "session_lifetime_seconds": 600,
        },
    }
    gateway = GatewayThread(base / "gateway", config).start()
    bin_dir = plugin_commands(base / "bin")
    (base / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {t}.{BASE_DOMAIN}\n" for t in real.servers)
    )
    return SSOWorld(base, ca, idp, gateway, dict(real.servers), bin_dir, base / "browser.log")
