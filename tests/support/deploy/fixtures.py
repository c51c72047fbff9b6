"""Fixtures for the chart tests: the real `helm` binary, and for the e2e tests one real etcd +
kube-apiserver (tests/support/kube.py) shared by the session. Without them the tests skip
saying why, or fail under VGATE_REQUIRE_E2E=1 (CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deploy import cluster
from tests.support.deploy.chart import CHART, NAMESPACE, require_helm
from tests.support.kube import ApiServer, Etcd, require_kube


@pytest.fixture(scope="session")
def helm() -> str:
    return require_helm()


@pytest.fixture(scope="session")
def kube_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_kube(kubectl=True)
    with Etcd(tmp_path_factory.mktemp("chart-etcd")) as etcd:
        yield etcd


@pytest.fixture(scope="session")
def kube_api(kube_etcd: Etcd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The host cluster the chart is applied to: the real API server from $KUBEBUILDER_ASSETS,
    serving ValidatingAdmissionPolicy (its feature gate on, on versions before 1.30), with the
    release namespace."""
    with ApiServer(
        tmp_path_factory.mktemp("chart-host"),
        kube_etcd,
        name="chart-host",
        extra_args=cluster.admission_policy_flags(),
    ) as api:
        api.kubectl("create", "namespace", NAMESPACE)
        yield api


@pytest.fixture(scope="session")
def chart_crds(kube_api: ApiServer) -> Path:
    """The chart's Tenant CRD, installed and established on `kube_api`."""
    crds = CHART / "crds"
    kube_api.kubectl("apply", "--server-side", "-f", str(crds))
    kube_api.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/tenants.vgate.io")
    return crds
