"""e2e: the rendered manifests pass a real kube-apiserver's validation and admission
(`kubectl apply --dry-run=server --validate=strict`), including the admission policy's CEL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import NAMESPACE, render
from tests.deploy.schemas import SHAPED_CRDS
from tests.deploy.variants import VARIANTS
from tests.support import kube as envtest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = envtest.missing_binaries()
    if missing:
        pytest.skip(f"no {' and '.join(missing)} in {envtest.assets_dir()} "
                    "(set KUBEBUILDER_ASSETS): the e2e tier needs a real API server")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    with envtest.api_server(tmp_path_factory.mktemp("apiserver")) as path:
        subprocess.run(["kubectl", "--kubeconfig", str(path), "create", "namespace", NAMESPACE],
                       check=True, capture_output=True, timeout=60)
        yield path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_server_side_dry_run_accepts_every_builtin_object(helm: str, kubeconfig: Path,
                                                          variant: str) -> None:
    out = render(helm, VARIANTS[variant])
    # Custom resources need their CRDs (cert-manager, Gateway API, Traefik, prometheus-
    # operator), which this API server does not have; they are shape-checked offline.
    builtin = [o for o in out.objects if (o["apiVersion"], o["kind"]) not in SHAPED_CRDS]
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--dry-run=server",
         "--validate=strict", "-f", "-"],
        input=yaml.safe_dump_all(builtin), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(builtin)


CRDS = Path(__file__).resolve().parents[2] / "deploy/helm/vgate/crds"


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=120)


def test_tenant_crd_installs_and_the_kubernetes_store_works_on_it(kubeconfig: Path) -> None:
    """The chart's CRD on a real API server (structural schema, printer columns), and the
    kubernetes tenant store's compare-and-swap, watch and Lease against it."""
    import asyncio

    from gateway.lifecycle.model import TenantSpec, TenantStatus
    from gateway.lifecycle.stores.kubernetes import KubernetesTenantStore
    from gateway.lifecycle.stores.protocol import MANAGER_LEASE, Conflict

    proc = _kubectl(kubeconfig, "apply", "--server-side", "-f", str(CRDS))
    assert proc.returncode == 0, proc.stderr
    proc = _kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
                    "crd/tenants.vgate.io")
    assert proc.returncode == 0, proc.stderr

    async def scenario() -> None:
        first = KubernetesTenantStore(namespace=NAMESPACE, lease_name="vgate-lifecycle",
                                      kubeconfig=kubeconfig)
        second = KubernetesTenantStore(namespace=NAMESPACE, lease_name="vgate-lifecycle",
                                       kubeconfig=kubeconfig)
        try:
            record = await first.create(TenantSpec(name="e2e", admin_groups=["admins"]))
            await second.list()
            record = await first.update_status("e2e", TenantStatus(step="helm-install"),
                                               record.version)
            with pytest.raises(Conflict):
                await first.update_status("e2e", TenantStatus(), record.version - 1)
            for _ in range(100):
                if (await second.get("e2e")).status.step == "helm-install":
                    break
                await asyncio.sleep(0.05)
            assert (await second.get("e2e")).version == record.version
            assert await first.acquire_lease(MANAGER_LEASE, "a", 15)
            assert not await second.acquire_lease(MANAGER_LEASE, "b", 15)
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())
    table = _kubectl(kubeconfig, "-n", NAMESPACE, "get", "tenants")
    assert table.returncode == 0, table.stderr
    assert "helm-install" in table.stdout and "running" in table.stdout
