from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.provisioning.helm import HelmProvisioner, HelmSettings
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from tests.support.kube import ApiServer, Etcd, require_kube
from tests.support.lifecycle.fakes import FakeHelm, FakeHost, World, connector
from tests.support.tiers import tool_missing


@dataclass
class Setup:
    world: World
    store: SQLiteTenantStore
    files: CredentialFiles
    tmp: Path
    settings: HelmSettings = field(
        default_factory=lambda: HelmSettings(poll_seconds=0.0, ready_timeout=0.05)
    )

    def reconciler(self) -> Reconciler:
        """A fresh reconciler (as after a restart) over the same store and world."""
        provisioner = HelmProvisioner(
            FakeHost(self.world),
            FakeHelm(self.world),
            connector(self.world),
            self.files,
            self.settings,
        )
        return Reconciler(
            self.store,
            provisioner,
            hostname=lambda n: f"{n}.k8s.example.com",
            backoff=Backoff(base=0.0, cap=0.0, jitter=0.0),
            poll_seconds=0.01,
        )


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


CRDS = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "vgate" / "crds"


@pytest.fixture(scope="session")
def tenant_crd(kube_host: ApiServer) -> ApiServer:
    """`kube_host` with the chart's `tenants.vgate.io` CRD installed and established."""
    kube_host.kubectl("apply", "--server-side", "-f", str(CRDS))
    kube_host.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/tenants.vgate.io"
    )
    return kube_host


@pytest.fixture(scope="session")
def chart_rbac() -> list[dict]:
    """The RBAC the gateway's Helm chart gives its ServiceAccount `vgate` (namespace
    `vgate-system`) with the lifecycle manager on the kubernetes store (`helm template`,
    real helm): ClusterRoles, bindings and the store's Role. The ValidatingAdmissionPolicy
    is left out: its v1 API is newer than the test API server (v1.28)."""
    from tests.support.deploy.chart import find_helm, render

    helm = find_helm()
    if helm is None:
        why = "needs the helm binary to render the chart's RBAC"
        tool_missing(why)
    out = render(helm, {"lifecycle": {"enabled": True, "store": {"type": "kubernetes"}}})
    found = [o for o in out.objects if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    assert {o["metadata"]["name"] for o in found} == {
        "vgate-lifecycle",
        "vgate-tenant-manager",
        "vgate-lifecycle-store",
    }, found
    return found


def grant_chart_rbac(api: ApiServer, namespace: str, objects: list[dict], path: Path) -> Path:
    """ServiceAccount `vgate` in `namespace` with `objects` (the chart's, moved from
    `vgate-system` to `namespace`); returns a kubeconfig with its token at `path`."""
    import copy

    import yaml

    from tests.support.deploy.chart import NAMESPACE

    docs: list[dict] = [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "vgate", "namespace": namespace},
        }
    ]
    for obj in copy.deepcopy(objects):
        if obj["metadata"].get("namespace") == NAMESPACE:
            obj["metadata"]["namespace"] = namespace
        for subject in obj.get("subjects") or []:
            subject["namespace"] = namespace
        docs.append(obj)
    api.apply(yaml.safe_dump_all(docs))
    token = api.kubectl("-n", namespace, "create", "token", "vgate", "--duration=1h").stdout.strip()
    path.write_text(api.kubeconfig_text(token, user="vgate"))
    return path


@pytest.fixture
def store_kubeconfig(
    tenant_crd: ApiServer, host_namespace: str, chart_rbac: list[dict], tmp_path: Path
) -> Path:
    """A kubeconfig for ServiceAccount `vgate` in `host_namespace` with exactly the chart's
    tenant-store RBAC there: what a gateway replica has in a real installation."""
    store = [o for o in chart_rbac if o["metadata"]["name"].endswith("-lifecycle-store")]
    return grant_chart_rbac(tenant_crd, host_namespace, store, tmp_path / "store.yaml")
