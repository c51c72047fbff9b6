"""Two `vgate serve` replicas on the kubernetes tenant store (the API server stand-in as the
host): both learn a tenant from its `Tenant` object, both forward with the gateway token
published in its Secret (each from its own credential folder), and both drop it when the
object goes."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

from gateway.lifecycle.connect import connect, token_kubeconfig
from gateway.lifecycle.credential_files import CredentialFiles
from gateway.lifecycle.credential_secrets import CredentialSecrets
from gateway.lifecycle.kube_store import KubernetesTenantStore
from gateway.lifecycle.model import RouteInfo, TenantSpec
from tests.fakekube import Caller, FakeKube
from tests.support.craft import CraftingIssuer
from tests.support.scripted import ScriptedUpstream
from tests.support.served import ServedGateway

NS = "vgate-system"


@pytest.fixture
def host():
    kube = FakeKube(name="host", tokens={
        "vgate-sa": Caller(user="system:serviceaccount:vgate-system:vgate",
                           groups=("system:masters",))}).start()
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    yield kube
    kube.stop()


async def manage(host: FakeKube, tmp_path, action) -> None:
    """Play the lease holder: write through the same store and Secrets a manager uses."""
    store = KubernetesTenantStore(namespace=NS, lease_name="vgate-lifecycle",
                                  kubeconfig=tmp_path / "host.yaml")
    api = await connect(server=host.url, token="vgate-sa")
    shared = CredentialSecrets(api, NS, CredentialFiles(tmp_path / "manager"))
    try:
        await action(store, shared)
    finally:
        await store.close()
        await api.close()


def test_two_replicas_serve_a_tenant_from_the_kubernetes_store(host, tmp_path):
    issuer = CraftingIssuer().start()
    upstream = ScriptedUpstream()
    (tmp_path / "host.yaml").write_text(yaml.safe_dump(
        token_kubeconfig(host.url, "vgate-sa", None)))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(yaml.safe_dump(
        {"tenant": "*", "roles": {"view": {"groups": ["developers"]}}}))
    replicas = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            (folder / "vgate.yaml").write_text(yaml.safe_dump({
                "listen": {"host": "127.0.0.1", "port": 0},
                "routing": {"path_prefix": "/clusters"},
                "oidc": {"issuers": [{"issuer": issuer.issuer, "audiences": ["vgate"],
                                      "username_claim": "email"}]},
                "policies": str(tmp_path / "policies"),
                "lifecycle": {"store_backend": "kubernetes", "store_namespace": NS,
                              "store_kubeconfig": str(tmp_path / "host.yaml"),
                              "credentials_dir": str(folder / "credentials"),
                              "manage": False, "poll_seconds": 0.1},
            }))
            replicas.append(ServedGateway(folder / "vgate.yaml"))
        headers = {"Authorization": f"Bearer {issuer.sign(issuer.claims())}"}

        def codes() -> list[int]:
            return [httpx.get(f"http://127.0.0.1:{r.port}/clusters/t1/api", headers=headers,
                              timeout=10).status_code for r in replicas]

        assert codes() == [404, 404]

        async def create(store, shared):
            record = await store.create(TenantSpec(name="t1", admin_groups=["a"]))
            await shared.publish("t1", b"gateway-token-for-t1", b"")
            route = RouteInfo(server=f"http://127.0.0.1:{upstream.port}",
                              token_file="/var/lib/vgate/credentials/t1/token")  # the manager's
            await store.update_status("t1", record.status.model_copy(update={"route": route}),
                                      record.version)
        asyncio.run(manage(host, tmp_path, create))
        deadline = time.monotonic() + 10
        while codes() != [200, 200]:
            assert time.monotonic() < deadline, f"route did not reach both replicas: {codes()}"
            time.sleep(0.05)
        sent = upstream.heads[-2:]
        assert all(b"Authorization: Bearer gateway-token-for-t1" in h for h in sent), sent
        for name in ("a", "b"):
            token = tmp_path / name / "credentials" / "t1" / "token"
            assert token.read_bytes() == b"gateway-token-for-t1"
            assert token.stat().st_mode & 0o077 == 0

        async def delete(store, shared):
            await shared.withdraw("t1")
            await store.delete("t1", (await store.get("t1")).version)
        asyncio.run(manage(host, tmp_path, delete))
        deadline = time.monotonic() + 10
        while codes() != [404, 404]:
            assert time.monotonic() < deadline, f"a replica kept a deleted tenant: {codes()}"
            time.sleep(0.05)
        # the withdrawn credential leaves every replica's folder too
        assert not (tmp_path / "a" / "credentials" / "t1").exists()
        assert not (tmp_path / "b" / "credentials" / "t1").exists()
    finally:
        for replica in replicas:
            replica.stop()
        upstream.stop()
        issuer.down()
