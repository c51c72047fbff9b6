"""A small static RBAC: group -> rules, and kube-apiserver's forbidden messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from .model import ApiError, EffectiveUser, qualified

READ = ("get", "list", "watch")
WRITE = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@dataclass(frozen=True)
class Rule:
    """One policy rule. `scope`: "any", "namespaced" or "cluster" (of the resource type).

    `resources` entries are `name`, `name/sub`, `name/*` or `*` (anything, with subresources).
    `except_resources` removes matches. `paths` makes it a non-resource rule (`/api*` globs).
    """

    verbs: tuple[str, ...]
    groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ()
    scope: str = "any"
    except_resources: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def matches(self, attrs: Attributes, namespaced: bool | None) -> bool:
        """Whether this rule allows `attrs` (`namespaced`: scope of the resource type)."""
        if not ("*" in self.verbs or attrs.verb in self.verbs):
            return False
        if not attrs.resource_request:
            return any(fnmatchcase(attrs.path, p) for p in self.paths)
        if self.paths:
            return False
        if not ("*" in self.groups or attrs.group in self.groups):
            return False
        if self.scope == "namespaced" and namespaced is not True:
            return False
        if self.scope == "cluster" and namespaced is not False:
            return False
        full = attrs.full_resource
        if any(_resource_matches(r, attrs.resource, full) for r in self.except_resources):
            return False
        return any(_resource_matches(r, attrs.resource, full) for r in self.resources)


def _resource_matches(rule: str, resource: str, full: str) -> bool:
    if rule in ("*", full):
        return True
    return rule.endswith("/*") and full.startswith(rule[:-1]) and full != resource


_EVERYTHING = (
    Rule(verbs=("*",), groups=("*",), resources=("*",)),
    Rule(verbs=("*",), paths=("*",)),
)

#: group -> rules. Edit a copy and pass it as `FakeKube(rules=...)` to change the policy.
RULES: Mapping[str, tuple[Rule, ...]] = {
    "system:masters": _EVERYTHING,
    "vgate:cluster-admin": _EVERYTHING,
    "vgate:admin": (
        Rule(verbs=WRITE, resources=("*",), scope="namespaced"),  # incl. pods/exec (create)
        Rule(verbs=READ, resources=("*",), scope="cluster"),
    ),
    "vgate:view": (
        Rule(
            verbs=READ,
            resources=("*",),
            scope="namespaced",
            except_resources=(
                "secrets",
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "pods/proxy",
                "services/proxy",
            ),
        ),
        Rule(verbs=READ, groups=("",), resources=("namespaces", "namespaces/status")),
    ),
    # system:basic-user + system:discovery + system:public-info-viewer
    "system:authenticated": (
        Rule(
            verbs=("create",), groups=("authentication.k8s.io",), resources=("selfsubjectreviews",)
        ),
        Rule(
            verbs=("create",),
            groups=("authorization.k8s.io",),
            resources=("selfsubjectaccessreviews", "selfsubjectrulesreviews"),
        ),
        Rule(
            verbs=("get",),
            paths=(
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
                "/version",
                "/version/",
                "/openapi",
                "/openapi/*",
                "/healthz",
                "/livez",
                "/readyz",
            ),
        ),
    ),
}


@dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes: what a request (or a review) asks to do."""

    verb: str
    resource_request: bool = True
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def allowed(
    rules: Mapping[str, tuple[Rule, ...]],
    user: EffectiveUser,
    attrs: Attributes,
    namespaced: bool | None,
) -> bool:
    """Whether any rule bound to one of `user`'s groups allows `attrs`."""
    return any(rule.matches(attrs, namespaced) for g in user.groups for rule in rules.get(g, ()))


def forbidden_message(username: str, attrs: Attributes) -> str:
    """`forbiddenMessage()` from k8s.io/apiserver responsewriters."""
    if not attrs.resource_request:
        return f'User "{username}" cannot {attrs.verb} path "{attrs.path}"'
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return (
        f'User "{username}" cannot {attrs.verb} resource "{attrs.full_resource}" '
        f'in API group "{attrs.group}" {where}'
    )


def forbidden(username: str, attrs: Attributes, reason: str = "") -> ApiError:
    """`responsewriters.Forbidden` -> `apierrors.NewForbidden` as a 403 Status."""
    msg = forbidden_message(username, attrs)
    if reason:
        msg = f"{msg}: {reason}"
    if not attrs.resource_request or not attrs.resource:
        return ApiError(403, "Forbidden", f"forbidden: {msg}", {})
    gr = qualified(attrs.group, attrs.resource)
    who = f'{gr} "{attrs.name}"' if attrs.name else gr
    details: dict[str, Any] = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.group:
        details["group"] = attrs.group
    details["kind"] = attrs.resource
    return ApiError(403, "Forbidden", f"{who} is forbidden: {msg}", details)
