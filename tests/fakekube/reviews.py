"""SelfSubjectReview, (Self)SubjectAccessReview and SelfSubjectRulesReview answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import resources
from .model import EffectiveUser, bad_request
from .rbac import Attributes, Rule, allowed

Obj = dict[str, Any]
Rules = Mapping[str, tuple[Rule, ...]]


def scope_of(group: str, resource: str, namespace: str) -> bool | None:
    """Whether a resource type is namespaced (guess from the namespace when unknown)."""
    t = resources.by_resource(group, resource)
    if t is not None:
        return t.namespaced
    return True if namespace else None


def self_subject_review(user: EffectiveUser) -> Obj:
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user.user_info()},
    }


def _attributes(spec: Obj) -> Attributes:
    ra, nra = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if ra:
        return Attributes(
            verb=ra.get("verb", ""), group=ra.get("group", ""), version=ra.get("version", ""),
            resource=ra.get("resource", ""), subresource=ra.get("subresource", ""),
            namespace=ra.get("namespace", ""), name=ra.get("name", ""),
        )
    if nra:
        return Attributes(verb=nra.get("verb", ""), resource_request=False,
                          path=nra.get("path", ""))
    raise bad_request("exactly one of nonResourceAttributes or resourceAttributes must be "
                      "specified")


def _decide(rules: Rules, user: EffectiveUser, attrs: Attributes) -> Obj:
    scope = scope_of(attrs.group, attrs.resource, attrs.namespace)
    if allowed(rules, user, attrs, scope):
        group = next(g for g in user.groups
                     if any(r.matches(attrs, scope) for r in rules.get(g, ())))
        return {"allowed": True,
                "reason": f'RBAC: allowed by ClusterRoleBinding "{group}" of ClusterRole '
                          f'"{group}" to Group "{group}"'}
    return {"allowed": False}


def access_review(rules: Rules, body: Obj, user: EffectiveUser | None) -> Obj:
    """Answer a SelfSubjectAccessReview (`user` given) or SubjectAccessReview (from spec)."""
    spec = dict(body.get("spec") or {})
    if user is None:
        if not spec.get("user") and not spec.get("groups"):
            raise bad_request("at least one of user or group must be specified")
        user = EffectiveUser(user=spec.get("user", ""), uid=spec.get("uid", ""),
                             groups=tuple(spec.get("groups") or ()),
                             extra=dict(spec.get("extra") or {}))
    attrs = _attributes(spec)
    return {
        "kind": body.get("kind"),
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None, **(body.get("metadata") or {})},
        "spec": spec,
        "status": _decide(rules, user, attrs),
    }


def rules_review(rules: Rules, body: Obj, user: EffectiveUser) -> Obj:
    """A SelfSubjectRulesReview for `spec.namespace`."""
    spec = body.get("spec") or {}
    res: list[Obj] = []
    non: list[Obj] = []
    incomplete = False  # RBAC rules cannot express exceptions or scope limits
    for g in user.groups:
        for rule in rules.get(g, ()):
            incomplete |= bool(rule.except_resources) or rule.scope != "any"
            if rule.paths:
                non.append({"verbs": list(rule.verbs), "nonResourceURLs": list(rule.paths)})
            elif rule.scope != "cluster" or not spec.get("namespace"):
                res.append({"verbs": list(rule.verbs), "apiGroups": list(rule.groups),
                            "resources": list(rule.resources)})
    return {
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": {"resourceRules": res, "nonResourceRules": non, "incomplete": incomplete},
    }
