"""The resource types the fake serves, as discovery describes them."""

from __future__ import annotations

from dataclasses import dataclass

CRUD = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Sub:
    """A subresource such as `pods/log`."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = CRUD
    subresources: tuple[Sub, ...] = ()
    categories: tuple[str, ...] = ()
    fields: tuple[str, ...] = ("spec", "status")
    virtual: bool = False  # create-only review types, never stored

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def has_status(self) -> bool:
        return any(s.name == "status" for s in self.subresources)


_STATUS = Sub("status", "", ("get", "patch", "update"))

TYPES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        ("ns",),
        ("create", "delete", "get", "list", "patch", "update", "watch"),
        (Sub("finalize", "Namespace", ("update",)), Sub("status", "Namespace", _STATUS.verbs)),
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        ("po",),
        CRUD,
        (
            Sub("attach", "PodAttachOptions", ("create", "get")),
            Sub("exec", "PodExecOptions", ("create", "get")),
            Sub("log", "Pod", ("get",)),
            Sub("portforward", "PodPortForwardOptions", ("create", "get")),
            Sub("status", "Pod", _STATUS.verbs),
        ),
        ("all",),
    ),
    ResourceType(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        True,
        ("cm",),
        fields=("data", "binaryData", "immutable"),
    ),
    ResourceType(
        "", "v1", "secrets", "Secret", True, fields=("data", "stringData", "type", "immutable")
    ),
    ResourceType(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        True,
        ("sa",),
        fields=("secrets", "imagePullSecrets", "automountServiceAccountToken"),
    ),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        True,
        ("svc",),
        subresources=(Sub("status", "Service", _STATUS.verbs),),
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        ("deploy",),
        subresources=(Sub("status", "Deployment", _STATUS.verbs),),
        categories=("all",),
    ),
    ResourceType(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        False,
        fields=("roleRef", "subjects"),
    ),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, fields=("spec",)),
    # vgate's own CRD (deploy/helm/vgate/crds/): no status subresource, one object per tenant
    ResourceType("vgate.io", "v1alpha1", "tenants", "Tenant", True),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        False,
        verbs=("create",),
        virtual=True,
    ),
)

#: (group, version) pairs in discovery order, core first.
GROUP_VERSIONS: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys((t.group, t.version) for t in TYPES)
)


def find(group: str, version: str, plural: str) -> ResourceType | None:
    """The type served at /api(s)/group/version/plural, if any."""
    for t in TYPES:
        if (t.group, t.version, t.plural) == (group, version, plural):
            return t
    return None


def by_resource(group: str, plural: str) -> ResourceType | None:
    """The type for a group + plural, any version (for authorization scope)."""
    for t in TYPES:
        if (t.group, t.plural) == (group, plural):
            return t
    return None


def by_kind(api_version: str, kind: str) -> ResourceType | None:
    for t in TYPES:
        if (t.api_version, t.kind) == (api_version, kind):
            return t
    return None
