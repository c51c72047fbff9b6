"""The tenants.vgate.io CRD in the chart's crds/: a valid CRD, matching what the kubernetes
tenant store writes, and the chart's Role grants exactly what that store uses."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
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
from tests.deploy.chart import RELEASE, render
from tests.deploy.schemas import validate

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy/helm/vgate/crds/tenants.vgate.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI v3.0 `nullable` → JSON Schema's type list (all else is the same here)."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items()
               if k not in ("nullable", "x-kubernetes-preserve-unknown-fields")}
        if node.get("nullable"):
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


def written(record: TenantRecord) -> dict[str, Any]:
    return kube_store.object_of(record, "vgate-system", "42")


def busy_record() -> TenantRecord:
    return TenantRecord(
        spec=TenantSpec(name="team-a", admin_groups=["a"], view_groups=["v"], ha=3,
                        quota={"pods": "20"}, values={"sync": {"toHost": {}}}),
        status=TenantStatus(phase=Phase.ready, step=None, conditions=[
            Condition(type="Ready", status="True", reason="Converged")],
            route=RouteInfo(server="https://team-a.vcluster-team-a.svc:443", token_file="/t")),
        version=7, generation=3, created_at=1.5, last_activity=2.5)


def test_the_crd_is_a_valid_apiextensions_object(crd: dict[str, Any]) -> None:
    assert validate(crd) == "openapi"
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == \
        (kube_store.GROUP, kube_store.KIND, kube_store.PLURAL)
    assert [v["name"] for v in crd["spec"]["versions"] if v["storage"]] == [kube_store.VERSION]
    assert crd["spec"]["scope"] == "Namespaced"


@pytest.mark.parametrize("record", [busy_record(), TenantRecord(
    spec=TenantSpec(name="t", admin_groups=["a"]), version=1, generation=1)])
def test_what_the_store_writes_fits_the_schema_and_reads_back(crd: dict[str, Any],
                                                              record: TenantRecord) -> None:
    version = crd["spec"]["versions"][0]
    schema = _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
    obj = written(record)
    jsonschema.validate(obj, schema)
    assert kube_store.record_of(obj) == record
    bad = copy.deepcopy(obj)
    bad["spec"]["desired"] = "sleeping"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_printer_columns_point_at_written_fields(crd: dict[str, Any]) -> None:
    obj = written(busy_record())
    obj["metadata"]["creationTimestamp"] = "2026-11-22T00:00:00Z"
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        node: Any = obj
        for part in column["jsonPath"].lstrip(".").split("."):
            assert isinstance(node, dict) and part in node, column
            node = node[part]


def test_helm_installs_the_crd(helm: str) -> None:
    out = render(helm, {"lifecycle": {"enabled": True, "store": {"type": "kubernetes"}}},
                 extra_args=("--include-crds",))
    assert out.one("CustomResourceDefinition", "tenants.vgate.io")


# What the kubernetes store and the credential mirror call, per resource (see kube_store.py
# and credential_secrets.py): the Role must allow these and nothing more.
USED = {
    ("vgate.io", "tenants"): {"get", "list", "watch", "create", "update", "delete"},
    ("", "secrets"): {"get", "list", "create", "patch", "delete"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
}


def test_the_store_role_grants_what_the_store_uses(helm: str) -> None:
    out = render(helm, {"replicaCount": 2, "lifecycle": {"enabled": True,
                                                         "store": {"type": "kubernetes"}}})
    role = out.one("Role", f"{RELEASE}-lifecycle-store")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == USED
