"""Two `vgate serve` replicas on the kubernetes tenant store, all real: the host is a real
kube-apiserver with the chart's CRD (the replicas use exactly the chart's RBAC), the tenant a
second real kube-apiserver. Both replicas learn the tenant from its `Tenant` object, both
forward with the gateway token published in its Secret (each from its own credential folder),
the tenant's audit log shows who each request ran as, and both drop the tenant when the
object goes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.kube import LightkubeAPI
from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.stores.kubernetes import KubernetesTenantStore
from tests.support.craft import CraftingIssuer
from tests.support.kube import ApiServer, bind_role_groups, impersonator_token
from tests.support.served import ServedGateway

pytestmark = [pytest.mark.slow]


@pytest.fixture
def tenant(kube_host, tmp_path):
    """The tenant's own API server (on the host's etcd, under its own prefix)."""
    with ApiServer(
        tmp_path / "tenant-api", kube_host.etcd, name=f"tenant-{tmp_path.name[-12:]}"
    ) as api:
        bind_role_groups(api)
        yield api


async def manage(kubeconfig, namespace, tmp_path, action) -> None:
    """Play the lease holder: write through the same store and Secrets a manager uses."""
    store = KubernetesTenantStore(
        namespace=namespace, lease_name="vgate-lifecycle", kubeconfig=kubeconfig
    )
    api = LightkubeAPI.from_path(kubeconfig)
    shared = CredentialSecrets(api, namespace, CredentialFiles(tmp_path / "manager"))
    try:
        await action(store, shared)
    finally:
        await store.close()
        await api.close()


def test_two_replicas_serve_a_tenant_from_the_kubernetes_store(
    host_namespace, store_kubeconfig, tenant, tmp_path
):
    ns = host_namespace
    issuer = CraftingIssuer().start()
    gateway_token = impersonator_token(tenant).encode()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    replicas = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "vgate.yaml").write_text(
                yaml.safe_dump(
                    {
                        "listen": {"host": "127.0.0.1", "port": 0},
                        "routing": {"path_prefix": "/clusters"},
                        "oidc": {
                            "issuers": [
                                {
                                    "issuer": issuer.issuer,
                                    "audiences": ["vgate"],
                                    "username_claim": "email",
                                }
                            ]
                        },
                        "policies": str(tmp_path / "policies"),
                        "lifecycle": {
                            "store_backend": "kubernetes",
                            "store_namespace": ns,
                            "store_kubeconfig": str(store_kubeconfig),
                            "credentials_dir": str(folder / "credentials"),
                            "manage": False,
                            "poll_seconds": 0.1,
                        },
                    }
                )
            )
            replicas.append(ServedGateway(folder / "vgate.yaml"))
        headers = {"Authorization": f"Bearer {issuer.sign(issuer.claims())}"}

        def calls() -> list[httpx.Response]:
            return [
                httpx.get(
                    f"http://127.0.0.1:{r.port}/clusters/t1/api/v1/namespaces",
                    headers=headers,
                    timeout=10,
                )
                for r in replicas
            ]

        assert [r.status_code for r in calls()] == [404, 404]

        async def create(store, shared):
            record = await store.create(TenantSpec(name="t1", admin_groups=["a"]))
            await shared.publish("t1", gateway_token, tenant.ca_file.read_bytes())
            route = RouteInfo(
                server=tenant.url,
                ca_file="/var/lib/vgate/credentials/t1/ca.crt",  # the manager's
                token_file="/var/lib/vgate/credentials/t1/token",
            )
            await store.update_status(
                "t1", record.status.model_copy(update={"route": route}), record.version
            )

        asyncio.run(manage(store_kubeconfig, ns, tmp_path, create))
        deadline = time.monotonic() + 15
        while True:
            answers = calls()
            if [r.status_code for r in answers] == [200, 200]:
                break
            assert time.monotonic() < deadline, (
                f"route did not reach both replicas: {[r.text[:200] for r in answers]}"
            )
            time.sleep(0.1)
        # each request really ran on the tenant as alice, through the gateway's token
        for answer in answers:
            who = tenant.audit.ran_as(answer.headers["audit-id"])
            assert who.authenticated_as == "system:serviceaccount:default:vgate"
            assert who.user == "alice@example.com" and who.impersonated
            assert "vgate:view" in who.groups
        for name in ("a", "b"):
            token = tmp_path / name / "credentials" / "t1" / "token"
            assert token.read_bytes() == gateway_token
            assert token.stat().st_mode & 0o077 == 0

        async def delete(store, shared):
            await shared.withdraw("t1")
            await store.delete("t1", (await store.get("t1")).version)

        asyncio.run(manage(store_kubeconfig, ns, tmp_path, delete))
        deadline = time.monotonic() + 15
        while [r.status_code for r in calls()] != [404, 404]:
            assert time.monotonic() < deadline, "a replica kept a deleted tenant"
            time.sleep(0.1)
        # the withdrawn credential leaves every replica's folder too
        assert not (tmp_path / "a" / "credentials" / "t1").exists()
        assert not (tmp_path / "b" / "credentials" / "t1").exists()
    finally:
        for replica in replicas:
            replica.stop()
        issuer.down()


def test_the_manager_lease_moves_on_sigterm_at_once_and_after_sigkill_within_its_duration(
    host_namespace, store_kubeconfig, kube_host, tmp_path
):
    """Two managing `vgate serve` replicas on the chart's RBAC: one holds the Lease. SIGTERM
    releases it (the other takes it on its next try, within a third of the lease); SIGKILL
    leaves it held, and the other takes it once it has seen it unrenewed for the lease's
    duration (15 s) by its own clock."""
    import os
    import signal
    import socket

    ns = host_namespace

    def replica(name: str) -> ServedGateway:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        (folder / "policies").mkdir(exist_ok=True)
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "workers": 1,
            "routing": {"path_prefix": "/clusters"},
            "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["v"]}]},
            "policies": str(folder / "policies"),
            "lifecycle": {
                "store_backend": "kubernetes",
                "store_namespace": ns,
                "store_kubeconfig": str(store_kubeconfig),
                "credentials_dir": str(folder / "credentials"),
                "provisioner": "helm",  # no tenant here: it never runs
                "helm": {"kubeconfig": str(store_kubeconfig)},
                "poll_seconds": 0.1,
            },
        }
        (folder / "vgate.yaml").write_text(yaml.safe_dump(config))
        return ServedGateway(folder / "vgate.yaml")

    def holder() -> str:
        out = kube_host.kubectl(
            "-n", ns, "get", "lease", "vgate-lifecycle", "-o", "json", check=False
        )
        if out.returncode:
            return ""
        return (yaml.safe_load(out.stdout).get("spec") or {}).get("holderIdentity") or ""

    def held_by(replicas: dict[str, ServedGateway], within: float) -> tuple[str, float]:
        start = time.monotonic()
        while time.monotonic() - start < within:
            now = holder()
            for name, served in replicas.items():
                if now.startswith(f"{socket.gethostname()}:{served.proc.pid}:"):
                    return name, time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError(f"no replica holds the lease after {within}s: {holder()!r}")

    replicas = {name: replica(name) for name in ("a", "b")}
    try:
        first, _ = held_by(replicas, 20)
        other = "b" if first == "a" else "a"
        replicas[first].stop()  # SIGTERM
        assert replicas[first].proc.returncode == 0
        _, took = held_by({other: replicas[other]}, 15)
        assert took < 8, f"a released lease took {took:.1f}s to move"
        print(f"lease takeover after SIGTERM: {took:.1f}s")
        replicas[first] = replica(first)  # back, as a follower
        os.kill(replicas[other].proc.pid, signal.SIGKILL)
        replicas[other].proc.wait(10)
        _, took = held_by({first: replicas[first]}, 30)
        assert 14 < took < 25, f"took over after {took:.1f}s"
        print(f"lease takeover after SIGKILL: {took:.1f}s")
    finally:
        for served in replicas.values():
            served.stop()
