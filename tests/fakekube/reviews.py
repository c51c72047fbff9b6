"""SelfSubjectReview (`kubectl auth whoami`), and the scope of a resource type for RBAC.

Access reviews are not emulated: the real kube-apiserver answers them in the tests."""

from __future__ import annotations

from typing import Any

from . import resources
from .model import EffectiveUser

Obj = dict[str, Any]


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
