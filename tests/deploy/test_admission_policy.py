"""The rendered ValidatingAdmissionPolicy, evaluated with a CEL interpreter (cel-python) on the
requests the API server would hand it: the lifecycle manager may write tenant namespaces and
role bindings inside them, and nothing else with its cluster-wide grants."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.chart import NAMESPACE, RELEASE, render

celpy = pytest.importorskip("celpy", reason="cel-python is in the test extra")

MANAGER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"
LABEL = "vgate.io/tenant"


@pytest.fixture(scope="module")
def policy(helm: str) -> dict[str, Any]:
    out = render(helm, {"replicaCount": 1, "lifecycle": {"enabled": True}})
    return out.one("ValidatingAdmissionPolicy")["spec"]


def _ns(name: str, labelled: bool) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labelled:
        meta["labels"] = {LABEL: name, "kubernetes.io/metadata.name": name}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _admit(policy: dict[str, Any], *, operation: str, resource: str, obj: Any, old: Any,
           namespace: Any = None, user: str = MANAGER) -> str | None:
    """None if admitted, else the denial message (as the API server would compute it)."""
    env = celpy.Environment()

    def run(expression: str, activation: dict[str, Any]) -> Any:
        return env.program(env.compile(expression)).evaluate(activation)

    request = {"operation": operation, "userInfo": {"username": user},
               "resource": {"group": "" if resource == "namespaces" else
                            "rbac.authorization.k8s.io", "version": "v1", "resource": resource}}
    activation: dict[str, Any] = {
        "request": celpy.json_to_cel(request),
        "object": celpy.json_to_cel(obj) if obj is not None else None,
        "oldObject": celpy.json_to_cel(old) if old is not None else None,
        "namespaceObject": celpy.json_to_cel(namespace) if namespace is not None else None,
    }
    if not all(run(c["expression"], activation) for c in policy["matchConditions"]):
        return None  # the policy does not apply to this user
    variables = celpy.celtypes.MapType()  # values keep their CEL types (bool stays bool)
    activation["variables"] = variables
    for var in policy["variables"]:
        variables[celpy.celtypes.StringType(var["name"])] = run(var["expression"], activation)
    for check in policy["validations"]:
        if not run(check["expression"], activation):
            return str(run(check["messageExpression"], activation))
    return None


def test_manager_may_create_change_and_delete_tenant_namespaces(policy: dict) -> None:
    tenant = _ns("vc-team-a", labelled=True)
    assert _admit(policy, operation="CREATE", resource="namespaces", obj=tenant, old=None) is None
    assert _admit(policy, operation="UPDATE", resource="namespaces", obj=tenant,
                  old=tenant) is None
    assert _admit(policy, operation="DELETE", resource="namespaces", obj=None, old=tenant) is None


@pytest.mark.parametrize(("operation", "new", "old"), [
    ("CREATE", _ns("anything", labelled=False), None),
    ("UPDATE", _ns("kube-system", labelled=True), _ns("kube-system", labelled=False)),
    ("UPDATE", _ns("vc-team-a", labelled=False), _ns("vc-team-a", labelled=True)),
    ("DELETE", None, _ns("kube-system", labelled=False)),
], ids=["create-unlabelled", "adopt-kube-system", "drop-label", "delete-kube-system"])
def test_manager_may_not_touch_other_namespaces(policy: dict, operation: str, new: Any,
                                                old: Any) -> None:
    denied = _admit(policy, operation=operation, resource="namespaces", obj=new, old=old)
    assert denied == f"the vgate lifecycle manager may only create, change or delete " \
                     f"namespaces labelled {LABEL}"


def test_role_bindings_only_in_tenant_namespaces(policy: dict) -> None:
    binding = {"kind": "RoleBinding", "metadata": {"name": "x", "namespace": "vc-team-a"}}
    assert _admit(policy, operation="CREATE", resource="rolebindings", obj=binding, old=None,
                  namespace=_ns("vc-team-a", labelled=True)) is None
    denied = _admit(policy, operation="CREATE", resource="rolebindings", obj=binding, old=None,
                    namespace=_ns("kube-system", labelled=False))
    assert denied == \
        f"the vgate lifecycle manager may only bind roles in namespaces labelled {LABEL}"
    assert _admit(policy, operation="DELETE", resource="rolebindings", obj=None, old=binding,
                  namespace=_ns("vgate-system", labelled=False)) is not None


def test_other_users_are_not_affected(policy: dict) -> None:
    assert _admit(policy, operation="DELETE", resource="namespaces", obj=None,
                  old=_ns("kube-system", labelled=False), user="kubernetes-admin") is None
