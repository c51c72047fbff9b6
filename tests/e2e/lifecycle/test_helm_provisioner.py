"""The `helm` provisioner as far as a host without a kubelet allows, all real but the pods:
a real kube-apiserver as the host (the gateway's Helm chart RBAC for the manager, the
kubernetes tenant store and credential Secrets), the real `helm` binary installing a local
stand-in of the vcluster chart, and another real kube-apiserver as the tenant's virtual
cluster (RBAC bootstrap, TokenRequest, GET /version). `HostControllers` plays the
StatefulSet/namespace controllers and the vcluster pod, which need a kubelet and a
controller manager this world does not have."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import ssl
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.kube import LightkubeAPI
from gateway.lifecycle.model import Phase, TenantSpec
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.connect import connect
from gateway.lifecycle.provisioning.helm import HelmProvisioner, HelmSettings
from gateway.lifecycle.provisioning.helm_runner import HelmRunner
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.stores.kubernetes import KubernetesTenantStore
from tests.support.kube import ApiServer
from tests.support.lifecycle.converge import run_until_converged
from tests.support.lifecycle.fixtures import grant_chart_rbac
from tests.support.lifecycle.host_controllers import HostControllers

pytestmark = [pytest.mark.slow]

CHART = Path(__file__).resolve().parents[2] / "support" / "lifecycle" / "vcluster_chart"
HELM = shutil.which("helm") or "/usr/local/bin/helm"
GATEWAY_SA = "system:serviceaccount:vgate-system:vgate-gateway"


@pytest.fixture
def tenant_api(kube_host, tmp_path):
    """The tenant's virtual cluster: another real API server on the host's etcd."""
    with ApiServer(tmp_path / "vcluster", kube_host.etcd, name=f"vc-{uuid.uuid4().hex[:8]}") as api:
        yield api


def host_get(api: ApiServer, *args: str) -> dict | None:
    r = api.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def releases(api: ApiServer, ns: str) -> list[str]:
    """Helm's release records (one Secret per revision)."""
    found = host_get(api, "-n", ns, "secrets", "-l", "owner=helm,name=t1")
    return sorted(s["metadata"]["name"] for s in found["items"])


async def whoami(server: str, ca: bytes, token: str) -> str:
    context = ssl.create_default_context(cadata=ca.decode())
    async with httpx.AsyncClient(verify=context) as http:
        r = await http.post(
            f"{server}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 201, r.text
    return r.json()["status"]["userInfo"]["username"]


async def refused_within(server: str, ca: bytes, token: str, seconds: float) -> None:
    """Wait until the API server refuses `token` (401)."""
    context = ssl.create_default_context(cadata=ca.decode())
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(verify=context) as http:
        while True:
            r = await http.get(f"{server}/version", headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 401:
                return
            assert time.monotonic() < deadline, f"token still accepted after {seconds}s"
            await asyncio.sleep(0.5)


async def test_helm_provisioner_on_real_api_servers(
    tenant_crd, host_namespace, chart_rbac, tenant_api, tmp_path, monkeypatch
):
    host, ns_prefix = tenant_crd, f"hv{uuid.uuid4().hex[:6]}-"
    for what in ("CACHE", "CONFIG", "DATA"):  # helm's own files stay in the test's folder
        monkeypatch.setenv(f"HELM_{what}_HOME", str(tmp_path / "helm" / what.lower()))
    manager = grant_chart_rbac(host, host_namespace, chart_rbac, tmp_path / "manager.yaml")
    files = CredentialFiles(tmp_path / "credentials")
    host_api = LightkubeAPI.from_path(manager)
    shared = CredentialSecrets(
        LightkubeAPI.from_path(manager), host_namespace, CredentialFiles(tmp_path / "mirror")
    )
    settings = HelmSettings(
        chart=str(CHART),
        repo=None,
        chart_version="0.26.0",
        namespace_prefix=ns_prefix,
        gateway_namespace=host_namespace,
        manager_cluster_role="vgate-tenant-manager",
        manager_service_account="vgate",
        server_template=tenant_api.url,
        ready_timeout=30,
        poll_seconds=0.2,
    )
    provisioner = HelmProvisioner(
        host_api, HelmRunner(HELM, kubeconfig=str(manager)), connect, files, settings, shared=shared
    )
    store = KubernetesTenantStore(
        namespace=host_namespace, lease_name="vgate-lifecycle", kubeconfig=manager
    )
    reconciler = Reconciler(store, provisioner, backoff=Backoff(base=0.2, cap=1, jitter=0))
    operations = TenantOperations(store, versions=provisioner.versions)
    ns = f"{ns_prefix}t1"
    try:
        with HostControllers(host, tenant_api, lambda name: name.startswith(ns_prefix)) as kc:
            await operations.create(
                TenantSpec(
                    name="t1",
                    admin_groups=["t1-admins"],
                    quota={"pods": "20", "requests.cpu": "4"},
                    isolate=True,
                )
            )
            record = await run_until_converged(reconciler, "t1", within=120)
            assert record.status.phase is Phase.ready, record.status
            assert record.status.k8s_version == "v1.28.7"  # what the tenant's server says

            # every host object the provisioner applied, as the API server keeps it
            live_ns = host_get(host, "namespace", ns)
            assert live_ns["metadata"]["labels"]["vgate.io/tenant"] == "t1"
            assert live_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"
            quota = host_get(host, "-n", ns, "resourcequota", "vgate-quota")
            assert quota["spec"]["hard"] == {"pods": "20", "requests.cpu": "4"}
            assert host_get(host, "-n", ns, "limitrange", "vgate-limits") is not None
            for netpol in ("vgate-isolate", "vgate-gateway"):
                assert host_get(host, "-n", ns, "networkpolicy", netpol) is not None
            admins = host_get(host, "-n", ns, "rolebinding", "vgate-tenant-admins")
            assert [s["name"] for s in admins["subjects"]] == ["t1-admins"]
            access = host_get(host, "-n", ns, "rolebinding", "vgate-lifecycle-manager")
            assert access["subjects"][0]["namespace"] == host_namespace
            assert host_get(host, "-n", ns, "secret", "vgate-gateway-token") is not None
            # the release, installed by the real helm with vgate's values
            status = await HelmRunner(HELM, kubeconfig=str(manager)).status("t1", ns)
            assert status["status"] == "deployed" and status["chart_version"] == "0.26.0"
            tag = status["values"]["controlPlane"]["distro"]["k8s"]["image"]["tag"]
            assert tag == "v1.32.5"
            # a converged tenant is left alone: another pass makes no new helm revision
            assert await reconciler.reconcile("t1")
            assert releases(host, ns) == ["sh.helm.release.v1.t1.v1"]

            # inside the vcluster: the impersonator and its token, minted by TokenRequest
            token = files.token_path("t1").read_text()
            ca = files.ca_path("t1").read_bytes()
            assert await whoami(tenant_api.url, ca, token) == GATEWAY_SA
            minted = tenant_api.audit.matching(verb="create")
            minted = [e for e in minted if (e.get("objectRef") or {}).get("subresource") == "token"]
            assert minted and minted[-1]["user"]["username"] == "admin"  # the vc- credential
            assert minted[-1]["responseStatus"]["code"] == 201
            # published for the other replicas, as a Secret next to the Tenant object
            secret = host_get(host, "-n", host_namespace, "secret", "vgate-credential-t1")
            assert base64.b64decode(secret["data"]["token"]).decode() == token

            # the token is renewed by the gateway itself (no admin credential)
            expiry_secret = host_get(host, "-n", ns, "secret", "vgate-gateway-token")
            aged = str(float(base64.b64decode(expiry_secret["data"]["expiry"])) - 3000)
            host.kubectl(
                "-n",
                ns,
                "patch",
                "secret",
                "vgate-gateway-token",
                "--type=merge",
                "-p",
                json.dumps({"data": {"expiry": base64.b64encode(aged.encode()).decode()}}),
            )
            assert await reconciler.reconcile("t1")
            renewed = files.token_path("t1").read_text()
            assert renewed != token
            assert await whoami(tenant_api.url, ca, renewed) == GATEWAY_SA
            minted = [
                e
                for e in tenant_api.audit.matching(verb="create")
                if (e.get("objectRef") or {}).get("subresource") == "token"
            ]
            assert minted[-1]["user"]["username"] == GATEWAY_SA

            # the gateway's ServiceAccount deleted inside the tenant (its tokens die with it):
            # the next pass recreates it and mints a token the tenant accepts, at once
            tenant_api.kubectl("-n", "vgate-system", "delete", "serviceaccount", "vgate-gateway")
            await refused_within(tenant_api.url, ca, renewed, 30)  # its token cache: ~10 s
            assert await reconciler.reconcile("t1")
            replaced = files.token_path("t1").read_text()
            assert replaced != renewed
            assert await whoami(tenant_api.url, ca, replaced) == GATEWAY_SA

            # pause and resume like the vcluster CLI
            await operations.pause("t1")
            assert (
                await run_until_converged(reconciler, "t1", within=60)
            ).status.phase is Phase.paused
            sts = host_get(host, "-n", ns, "statefulset", "t1")
            assert sts["spec"]["replicas"] == 0
            assert sts["metadata"]["annotations"]["loft.sh/paused"] == "true"
            await operations.resume("t1")
            assert (
                await run_until_converged(reconciler, "t1", within=60)
            ).status.phase is Phase.ready
            assert host_get(host, "-n", ns, "statefulset", "t1")["spec"]["replicas"] == 1

            # upgrade: a helm upgrade with the next image; a version without one is refused
            with pytest.raises(Exception, match=r"Kubernetes 1\.34 is not available here"):
                await operations.upgrade("t1", "1.34")
            await operations.upgrade("t1", "1.33")
            await run_until_converged(reconciler, "t1", within=60)
            status = await HelmRunner(HELM, kubeconfig=str(manager)).status("t1", ns)
            assert status["values"]["controlPlane"]["distro"]["k8s"]["image"]["tag"] == "v1.33.1"
            assert releases(host, ns) == ["sh.helm.release.v1.t1.v1", "sh.helm.release.v1.t1.v2"]

            # delete: release, PVCs, namespace (finalized by the stand-in), credentials
            assert host_get(host, "-n", ns, "pvc", "data-t1-0") is not None
            await operations.delete("t1")
            assert await run_until_converged(reconciler, "t1", within=120) is None
            assert host_get(host, "namespace", ns) is None
            assert host_get(host, "-n", host_namespace, "secret", "vgate-credential-t1") is None
            assert not files.exists("t1")
            assert kc.errors == []
    finally:  # the API servers belong to the fixtures
        await store.close()
        await host_api.close()
        await shared.api.close()
