"""The e2e tier: real kube-apiservers (one shared etcd, each under its own prefix) from
`$KUBEBUILDER_ASSETS`, the real IdP, a gateway and real kubectl. `served` runs `vgate serve`
itself in front of API servers set up as the README tells a platform engineer (static
tenants); `lab` lets the lifecycle's `local` provisioner create them. Skips with one line
when the binaries are absent, and fails instead under VGATE_REQUIRE_E2E=1 (CI). Every test
under this folder is marked `e2e`."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.lifecycle.provisioning.local_process import stop as stop_process
from gateway.lifecycle.runtime import LifecycleRuntime
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from tests.support import kube as envtest
from tests.support.gateway_thread import GatewayThread
from tests.support.kubectl_world import BASE_DOMAIN, KUBECTL, World
from tests.support.local_kube import versioned_assets
from tests.support.oidc import OIDCProvider
from tests.support.pki import Leaf, TestCA
from tests.support.served import ServedGateway
from tests.support.tenants import RealTenants, tenant_entries
from tests.support.tiers import mark_tier, tool_missing

ASSETS = envtest.assets_dir()
USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["tenant1-admins"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["developers"]},
    "carol": {"email": "carol@example.com", "name": "Carol", "groups": ["tenant2-admins"]},
}
#: besides the admin groups stored with each tenant: developers may view tenant1
POLICIES = {
    "tenant1.yaml": {"tenant": "tenant1", "roles": {"view": {"groups": ["oidc:developers"]}}}
}


def require_binaries() -> None:
    envtest.require_kube(kubectl=True)
    if not Path(KUBECTL).exists() or shutil.which("node") is None:
        tool_missing("e2e needs kubectl and node (for the OpenID Provider)")


def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready_tenants(
    store: SQLiteTenantStore, names: tuple[str, ...] = ("tenant1", "tenant2"), timeout: float = 180
) -> None:
    """Create `names` (admins: oidc:<name>-admins) and wait until each is Ready."""
    from gateway.lifecycle.model import Phase, TenantSpec
    from gateway.lifecycle.operations import TenantOperations
    from gateway.lifecycle.provisioning.local_versions import local_versions

    ops = TenantOperations(store, versions=lambda: local_versions(ASSETS))
    for name in names:
        asyncio.run(ops.create(TenantSpec(name=name, admin_groups=[f"oidc:{name}-admins"])))
    for name in names:
        until(lambda n=name: phase(store, n) is Phase.ready, timeout, f"{name} ready")


def phase(store: SQLiteTenantStore, name: str):
    try:
        return asyncio.run(store.get(name)).status.phase
    except Exception:
        return None


def gateway_config(base: Path, leaf: Leaf, idp: OIDCProvider, tenants: tuple[str, ...]) -> dict:
    """What every e2e gateway shares: TLS with `leaf`, both routings, the IdP, the policies
    and audit log in `base`; also writes `base/hosts` for hostname routing to `tenants`."""
    (base / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {t}.{BASE_DOMAIN}\n" for t in tenants)
    )
    return {
        "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
        "routing": {"base_domain": BASE_DOMAIN, "path_prefix": "/clusters"},
        "oidc": {"issuers": [idp.issuer_entry()]},
        "policies": str(base / "policies"),
        "audit": {"file": str(base / "audit.log")},
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, SQLiteTenantStore]]:
    require_binaries()
    base = tmp_path_factory.mktemp("lifecycle-e2e")
    ca = TestCA(base / "pki")
    leaf = ca.issue("gateway", ["127.0.0.1", "localhost", BASE_DOMAIN, f"*.{BASE_DOMAIN}"])
    idp = OIDCProvider(base / "idp", users=USERS).start()
    (base / "policies").mkdir()
    for file, doc in POLICIES.items():
        (base / "policies" / file).write_text(yaml.safe_dump(doc))
    config = {
        **gateway_config(base, leaf, idp, ("tenant1", "tenant2")),
        "lifecycle": {
            "provisioner": "local",
            "store": str(base / "tenants.db"),
            "credentials_dir": str(base / "credentials"),
            "poll_seconds": 0.1,
            "wake_timeout_seconds": 90,
            # ASSETS, and a k8s/1.29.0-<os>-<arch>/ folder to upgrade to
            "local": {
                "assets_dir": str(versioned_assets(base / "assets")),
                "work_dir": str(base / "local"),
            },
        },
    }
    gateway = GatewayThread(base / "gateway", config).start()
    runtime = LifecycleRuntime(
        gateway.config, gateway.gateway.registry, gateway.gateway.policy.set_stored_roles
    )
    asyncio.run_coroutine_threadsafe(runtime.start(), gateway.loop).result(30)
    store = SQLiteTenantStore(base / "tenants.db")
    world = World(base, ca, idp, gateway, {}, config)
    try:
        yield world, store
    finally:
        asyncio.run_coroutine_threadsafe(runtime.stop(), gateway.loop).result(60)
        for pid_file in (base / "local" / "tenants").glob("*/pid"):
            stop_process(pid_file, "kube-apiserver")
        stop_process(base / "local" / "etcd" / "pid", "etcd")
        asyncio.run(store.close())
        gateway.stop()
        idp.stop()


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_recipe() -> list[tuple[list[str], str | None]]:
    """The README's commands that give the gateway a least-privilege credential: each
    `kubectl` line of the sh block that defines the `vgate-impersonator` ClusterRole, with
    the here-document it reads, if any (the final `create token` last, its redirection
    dropped)."""
    blocks = README.read_text().split("```sh\n")
    block = next(b.split("```")[0] for b in blocks[1:] if "vgate-impersonator" in b)
    commands: list[tuple[list[str], str | None]] = []
    lines = iter(block.replace("\\\n", " ").splitlines())
    for line in lines:
        if not line.startswith("kubectl "):
            continue
        command, _, heredoc = line.partition("<<")
        stdin = None
        if heredoc:
            end = heredoc.strip().strip("'\"")
            stdin = "".join(f"{body}\n" for body in iter(lambda: next(lines), end))
        commands.append((shlex.split(command.split(">")[0])[1:], stdin))
    return commands


def readme_cluster_role() -> dict:
    """The ClusterRole the README's recipe applies."""
    return next(
        yaml.safe_load(stdin)
        for args, stdin in readme_recipe()
        if args[:2] == ["apply", "-f"] and stdin and "ClusterRole" in stdin
    )


def recipe_credential(
    api: envtest.ApiServer, recipe: list[tuple[list[str], str | None]] | None = None
) -> str:
    """Run a credential recipe's commands as the cluster's admin (the README's by default);
    the last prints the gateway's token."""
    out = ""
    for args, stdin in recipe or readme_recipe():
        out = api.kubectl(*args, input=stdin).stdout
    return out.strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`vgate serve` (two workers) with static tenants: real API servers on one etcd."""
    require_binaries()
    with served_world(tmp_path_factory.mktemp("served-e2e")) as world:
        yield world


@contextlib.contextmanager
def served_world(base: Path, checkout: Path | None = None) -> Iterator[World]:
    """`served`'s world in `base`: `vgate serve` (two workers, this checkout's or the one in
    `checkout`) in front of real API servers whose credential the README's recipe made."""
    ca = TestCA(base / "pki")
    leaf = ca.issue("gateway", ["127.0.0.1", "localhost", BASE_DOMAIN, f"*.{BASE_DOMAIN}"])
    with (
        RealTenants(base / "kube", credential=recipe_credential) as real,
        OIDCProvider(base / "idp", users=USERS) as idp,
    ):
        (base / "policies").mkdir()
        for name in real.servers:
            (base / "policies" / f"{name}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "tenant": name,
                        "roles": {
                            "cluster-admin": {"groups": [f"oidc:{name}-admins"]},
                            **POLICIES.get(f"{name}.yaml", {}).get("roles", {}),
                        },
                    }
                )
            )
        config = {
            **gateway_config(base, leaf, idp, tuple(real.servers)),
            "listen": {
                "host": "127.0.0.1",
                "port": envtest.free_port(),
                "metrics_port": envtest.free_port(),
            },
            "workers": 2,
            "tenants": tenant_entries(real, base),
        }
        (base / "vgate.yaml").write_text(yaml.safe_dump(config))
        with ServedGateway(base / "vgate.yaml", workers=2, checkout=checkout) as gateway:
            yield World(base, ca, idp, gateway, dict(real.servers), config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "e2e")
