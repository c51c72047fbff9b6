from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credential_files import CredentialFiles
from gateway.lifecycle.helm_provisioner import HelmProvisioner, HelmSettings
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.sqlite_store import SQLiteTenantStore
from tests.lifecycle.fakes import FakeHelm, FakeHost, World, connector
from tests.support.kube import ApiServer, Etcd, require_kube


@dataclass
class Setup:
    world: World
    store: SQLiteTenantStore
    files: CredentialFiles
    tmp: Path
    settings: HelmSettings = field(
        default_factory=lambda: HelmSettings(poll_seconds=0.0, ready_timeout=0.05))

    def reconciler(self) -> Reconciler:
        """A fresh reconciler (as after a restart) over the same store and world."""
        provisioner = HelmProvisioner(
            FakeHost(self.world), FakeHelm(self.world), connector(self.world), self.files,
            self.settings,
        )
        return Reconciler(self.store, provisioner, hostname=lambda n: f"{n}.k8s.example.com",
                          backoff=Backoff(base=0.0, cap=0.0, jitter=0.0), poll_seconds=0.01)


@pytest.fixture
async def setup(tmp_path: Path):
    store = SQLiteTenantStore(tmp_path / "tenants.db")
    yield Setup(World(), store, CredentialFiles(tmp_path / "credentials"), tmp_path)
    await store.close()


@pytest.fixture(scope="session")
def kube_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One real kube-apiserver (+ etcd) for the lifecycle tests that talk to a host cluster;
    each test works in a namespace of its own (`host_namespace`)."""
    require_kube()
    base = tmp_path_factory.mktemp("kube-host")
    with Etcd(base / "etcd") as etcd, ApiServer(base / "host", etcd) as api:
        yield api


@pytest.fixture
def host_namespace(kube_host: ApiServer) -> str:
    """A fresh namespace on `kube_host` (there is no namespace controller to delete it)."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    kube_host.kubectl("create", "namespace", name)
    return name


CRDS = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "vgate" / "crds"


@pytest.fixture(scope="session")
def tenant_crd(kube_host: ApiServer) -> ApiServer:
    """`kube_host` with the chart's `tenants.vgate.io` CRD installed and established."""
    kube_host.kubectl("apply", "--server-side", "-f", str(CRDS))
    kube_host.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                      "crd/tenants.vgate.io")
    return kube_host


@pytest.fixture(scope="session")
def chart_store_rbac() -> list[dict]:
    """The Role + RoleBinding the gateway's Helm chart gives its ServiceAccount `vgate` for
    the kubernetes tenant store (`helm template`, real helm), in namespace `vgate-system`."""
    from tests.deploy.chart import NAMESPACE, find_helm, render

    helm = find_helm()
    if helm is None:
        why = "needs the helm binary to render the chart's RBAC"
        if os.environ.get("VGATE_REQUIRE_E2E") == "1":
            pytest.fail(f"VGATE_REQUIRE_E2E=1 but the tenant store tier {why}", pytrace=False)
        pytest.skip(why)
    out = render(helm, {"lifecycle": {"enabled": True, "store": {"type": "kubernetes"}}})
    found = [o for o in out.objects if o["kind"] in ("Role", "RoleBinding")
             and o["metadata"]["name"].endswith("-lifecycle-store")]
    assert len(found) == 2 and all(o["metadata"]["namespace"] == NAMESPACE for o in found)
    return found


@pytest.fixture
def store_kubeconfig(tenant_crd: ApiServer, host_namespace: str, chart_store_rbac: list[dict],
                     tmp_path: Path) -> Path:
    """A kubeconfig for ServiceAccount `vgate` in `host_namespace` with exactly the chart's
    tenant-store RBAC there: what a gateway replica has in a real installation."""
    import copy

    import yaml

    docs = [{"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": "vgate", "namespace": host_namespace}}]
    for obj in copy.deepcopy(chart_store_rbac):
        obj["metadata"]["namespace"] = host_namespace
        for subject in obj.get("subjects") or []:
            subject["namespace"] = host_namespace
        docs.append(obj)
    tenant_crd.apply(yaml.safe_dump_all(docs))
    token = tenant_crd.kubectl("-n", host_namespace, "create", "token", "vgate",
                               "--duration=1h").stdout.strip()
    path = tmp_path / "store-kubeconfig.yaml"
    path.write_text(tenant_crd.kubeconfig_text(token, user="vgate"))
    return path
