"""The tenants.vgate.io CRD as the chart ships it (the real helm binary): it names what the
kubernetes tenant store uses, helm installs it, and the chart's Role grants exactly what
that store calls. The API server's judgement of the CRD is `tests/e2e/deploy/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.lifecycle.stores import kubernetes as kube_store
from tests.support.deploy.chart import RELEASE, render

CRD_FILE = Path(__file__).resolve().parents[3] / "deploy/helm/vgate/crds/tenants.vgate.io.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


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
