"""ClusterRole aggregation for a tenant API server that runs without kube-controller-manager.

The built-in `admin`, `edit` and `view` ClusterRoles have no rules of their own: the
controller manager's clusterrole-aggregation controller fills them with the rules of every
ClusterRole their `aggregationRule` selects. The `local` provisioner runs a bare
kube-apiserver, so without this step the role groups bound to them (`vgate:view`, ...)
could do nothing. `aggregated_rules` is the controller's rule: the rules of the selected
roles, by role name, without duplicates; the step keeps every aggregated role equal to it.
"""

from __future__ import annotations

from typing import Any

from gateway.lifecycle.kube import KubeAPI, Manifest

RBAC = "rbac.authorization.k8s.io/v1"


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def aggregated_rules(role: Manifest, roles: list[Manifest]) -> list[Manifest] | None:
    """The rules `role` should have, or None when it does not aggregate."""
    selectors = (role.get("aggregationRule") or {}).get("clusterRoleSelectors")
    if not selectors:
        return None
    name = role["metadata"]["name"]
    rules: list[Manifest] = []
    for other in sorted(roles, key=lambda r: r["metadata"]["name"]):
        labels = other["metadata"].get("labels") or {}
        if other["metadata"]["name"] == name or not any(_matches(s, labels) for s in selectors):
            continue
        for rule in other.get("rules") or []:
            if rule not in rules:
                rules.append(rule)
    return rules


async def unaggregated(api: KubeAPI) -> dict[str, list[Manifest]]:
    """Aggregated ClusterRoles whose rules are not what they select: name → wanted rules."""
    roles = await api.list(RBAC, "ClusterRole", None)
    stale = {}
    for role in roles:
        wanted = aggregated_rules(role, roles)
        if wanted is not None and (role.get("rules") or []) != wanted:
            stale[role["metadata"]["name"]] = wanted
    return stale


async def aggregate(api: KubeAPI) -> None:
    for name, rules in (await unaggregated(api)).items():
        await api.merge_patch(RBAC, "ClusterRole", name, None, {"rules": rules})
