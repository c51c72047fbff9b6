"""e2e: the chart, rendered for the real kube-apiserver it is applied to (its /version and
discovery, as `helm install` would see them), passes that server's validation and admission
(`kubectl apply --dry-run=server --validate=strict`) for every variant; and the kubernetes
tenant store works on the chart's CRD there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from tests.support.deploy import cluster
from tests.support.deploy.chart import NAMESPACE, KubeTarget, Rendered, RenderError, render
from tests.support.deploy.schemas import SHAPED_CRDS
from tests.support.deploy.variants import VARIANTS
from tests.support.kube import ApiServer, Etcd


@pytest.fixture(scope="module")
def target(kube_api: ApiServer) -> KubeTarget:
    return cluster.target_of(kube_api)


def dry_run(api: ApiServer, out: Rendered) -> tuple[list[dict], str]:
    """Server-side dry run of the built-in objects (the CRDs of other projects, which this API
    server lacks, are shape-checked offline in schemas.py); (objects, kubectl's stderr)."""
    builtin = [o for o in out.objects if (o["apiVersion"], o["kind"]) not in SHAPED_CRDS]
    proc = api.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=yaml.safe_dump_all(builtin),
        check=False,
        timeout=120,
    )
    if proc.returncode == 0:
        assert proc.stdout.count("(server dry run)") == len(builtin), proc.stdout
    return builtin, proc.stderr if proc.returncode else ""


def test_renders_for_the_servers_version(
    helm: str, kube_api: ApiServer, target: KubeTarget
) -> None:
    version = cluster.get(kube_api, "/version")
    assert target.version == version["gitVersion"]
    out = render(helm, VARIANTS["lifecycle-sqlite"], target=target)
    hook = out.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["lifecycle"]
    policy = out.one("ValidatingAdmissionPolicy")["apiVersion"]
    if (int(version["major"]), int(version["minor"].rstrip("+"))) < (1, 30):
        assert set(hook["preStop"]) == {"exec"}
        assert policy == "admissionregistration.k8s.io/v1beta1"
    else:
        assert set(hook["preStop"]) == {"sleep"}
        assert policy == "admissionregistration.k8s.io/v1"
    assert f"{policy}/ValidatingAdmissionPolicy" in target.api_versions


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_server_side_dry_run_accepts_every_variant(
    helm: str, kube_api: ApiServer, target: KubeTarget, variant: str
) -> None:
    builtin, refused = dry_run(kube_api, render(helm, VARIANTS[variant], target=target))
    assert not refused, refused
    assert {o["kind"] for o in builtin} >= {"Deployment", "Service", "ConfigMap"}


def test_the_server_refuses_fields_newer_than_itself(
    helm: str, kube_api: ApiServer, target: KubeTarget
) -> None:
    """What the version gates are for: rendered for Kubernetes 1.30, the preStop sleep action
    is an unknown field to an older server (so the dry run above would catch a wrong gate)."""
    if cluster.binary_version() >= (1, 30):
        pytest.skip("this API server knows the 1.30 fields")
    _, refused = dry_run(kube_api, render(helm, {}, target=KubeTarget("1.30.0")))
    assert 'unknown field "spec.template.spec.containers[0].lifecycle.preStop.sleep"' in refused


def test_a_cluster_without_the_policy_api_gets_the_gateway_but_not_the_manager(
    helm: str, kube_etcd: Etcd, tmp_path: Path
) -> None:
    """A 1.28/1.29 cluster as it comes (ValidatingAdmissionPolicy off): the gateway installs,
    the lifecycle manager is refused at render time, naming the flags that would allow it."""
    if cluster.binary_version() >= (1, 30):
        pytest.skip("from 1.30 every API server serves ValidatingAdmissionPolicy")
    with ApiServer(tmp_path / "plain", kube_etcd, name="chart-plain") as plain:
        plain.kubectl("create", "namespace", NAMESPACE)
        target = cluster.target_of(plain)
        assert not any("ValidatingAdmissionPolicy" in api for api in target.api_versions)
        _, refused = dry_run(plain, render(helm, VARIANTS["full"], target=target))
        assert not refused, refused
        with pytest.raises(RenderError, match="ValidatingAdmissionPolicy=true"):
            render(helm, VARIANTS["lifecycle-sqlite"], target=target)
        # and helm install, asking the server itself, refuses before writing anything
        proc = cluster.helm_install(helm, plain, "vgate", NAMESPACE, VARIANTS["lifecycle-sqlite"])
        assert proc.returncode != 0
        assert "Kubernetes v1.28" in proc.stderr or "Kubernetes v1.29" in proc.stderr
        assert "--feature-gates=ValidatingAdmissionPolicy=true" in proc.stderr
        assert (
            plain.kubectl(
                "get",
                "clusterroles,deployments",
                "-A",
                "-l",
                "app.kubernetes.io/name=vgate",
                "-o",
                "name",
            ).stdout
            == ""
        )


def test_the_kubernetes_store_works_on_the_charts_crd(
    kube_api: ApiServer, chart_crds: Path
) -> None:
    """The kubernetes tenant store's compare-and-swap, watch and Lease against the chart's CRD
    on a real API server, and what `kubectl get tenants` shows of it."""
    from gateway.lifecycle.model import TenantSpec, TenantStatus
    from gateway.lifecycle.stores.kubernetes import KubernetesTenantStore
    from gateway.lifecycle.stores.protocol import MANAGER_LEASE, Conflict

    async def scenario() -> None:
        first = KubernetesTenantStore(
            namespace=NAMESPACE, lease_name="vgate-lifecycle", kubeconfig=kube_api.kubeconfig
        )
        second = KubernetesTenantStore(
            namespace=NAMESPACE, lease_name="vgate-lifecycle", kubeconfig=kube_api.kubeconfig
        )
        try:
            record = await first.create(TenantSpec(name="e2e", admin_groups=["admins"]))
            await second.list()
            record = await first.update_status(
                "e2e", TenantStatus(step="helm-install"), record.version
            )
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
    table = kube_api.kubectl("-n", NAMESPACE, "get", "tenants", "e2e").stdout
    assert "helm-install" in table and "running" in table
