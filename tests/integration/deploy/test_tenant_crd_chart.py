"""The tenants.vgate.io CRD in the chart's crds/, judged by a real API server (e2e): it is
established, stores what the kubernetes tenant store writes and gives it back unchanged,
refuses what its schema forbids, and its printer columns show the written fields. Offline:
helm ships it, and the chart's Role grants exactly what that store uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.lifecycle.model import (
    Condition,
    Phase,
    RouteInfo,
    TenantRecord,
    TenantSpec,
    TenantStatus,
)
from gateway.lifecycle.stores import kubernetes as kube_store
from tests.support.deploy.chart import RELEASE, render
from tests.support.kube import ApiServer

CRD_FILE = Path(__file__).resolve().parents[3] / "deploy/helm/vgate/crds/tenants.vgate.io.yaml"
NAMESPACE = "vgate-crd"  # the CRD tests' own, beside the other chart tests' namespaces


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@pytest.fixture(scope="module")
def store_api(kube_api: ApiServer, chart_crds: Path) -> ApiServer:
    """The API server with the chart's CRD established and a namespace for these tests."""
    kube_api.kubectl("create", "namespace", NAMESPACE)
    return kube_api


def busy_record() -> TenantRecord:
    return TenantRecord(
        spec=TenantSpec(
            name="team-a",
            admin_groups=["a"],
            view_groups=["v"],
            ha=3,
            quota={"pods": "20"},
            values={"sync": {"toHost": {}}},
        ),
        status=TenantStatus(
            phase=Phase.ready,
            step=None,
            conditions=[Condition(type="Ready", status="True", reason="Converged")],
            route=RouteInfo(server="https://team-a.vcluster-team-a.svc:443", token_file="/t"),
        ),
        version=7,
        generation=3,
        created_at=1.5,
        last_activity=2.5,
    )


def create(api: ApiServer, obj: dict[str, Any]) -> Any:
    """Create `obj` as the store would (no resourceVersion); the CompletedProcess."""
    return api.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)


def test_the_crd_names_what_the_store_uses(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        kube_store.GROUP,
        kube_store.KIND,
        kube_store.PLURAL,
    )
    assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == [kube_store.VERSION]
    assert crd["spec"]["scope"] == "Namespaced"


def test_helm_installs_the_crd(helm: str) -> None:
    out = render(
        helm,
        {"lifecycle": {"enabled": True, "store": {"type": "kubernetes"}}},
        extra_args=("--include-crds",),
    )
    assert out.one("CustomResourceDefinition", "tenants.vgate.io")


# What the kubernetes store and the credential mirror call, per resource (see kube_store.py
# and credential_secrets.py): the Role must allow these and nothing more.
USED = {
    ("vgate.io", "tenants"): {"get", "list", "watch", "create", "update", "delete"},
    ("", "secrets"): {"get", "list", "create", "patch", "delete"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
}


def test_the_store_role_grants_what_the_store_uses(helm: str) -> None:
    out = render(
        helm, {"replicaCount": 2, "lifecycle": {"enabled": True, "store": {"type": "kubernetes"}}}
    )
    role = out.one("Role", f"{RELEASE}-lifecycle-store")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == USED
