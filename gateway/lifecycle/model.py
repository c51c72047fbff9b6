"""Tenant records: the desired `TenantSpec` and the observed `TenantStatus`.

Validation errors always name the field (pydantic's `loc`), so the CLI and the admin API can
say which input was wrong.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from gateway.identity import usable_names
from gateway.lifecycle.versions import minor_of

TENANT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Names that would collide with the gateway's own pages, Kubernetes or vcluster objects.
RESERVED_NAMES = frozenset(
    {
        "admin",
        "api",
        "apis",
        "clusters",
        "default",
        "healthz",
        "kube-node-lease",
        "kube-public",
        "kube-system",
        "livez",
        "login",
        "metrics",
        "portal",
        "readyz",
        "static",
        "vgate",
        "www",
    }
)
# The version a tenant gets when neither it nor the provisioner says otherwise (which versions
# can run is the provisioner's: `versions.KubernetesVersions`).
DEFAULT_VERSION = "1.32"
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
QUOTA_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
MAX_GROUPS = 64
MAX_ISSUER = 1024
ERROR_REFERENCE = r"^[0-9a-f]{10}$"  # `new_error_reference()`; the CRD's status schema too


def field_problems(exc: ValidationError, *, whole: str = "input") -> list[tuple[str, str]]:
    """(dotted field, message) for each error of `exc`; `whole` names the input itself."""
    return [
        (".".join(str(p) for p in e["loc"]) or whole, e["msg"].removeprefix("Value error, "))
        for e in exc.errors()
    ]


class Desired(StrEnum):
    running = "running"
    paused = "paused"
    deleted = "deleted"


class Phase(StrEnum):
    pending = "Pending"
    provisioning = "Provisioning"
    ready = "Ready"
    pausing = "Pausing"
    paused = "Paused"
    deleting = "Deleting"


def parse_quota(text: str) -> dict[str, str]:
    """`cpu=10,memory=20Gi,pods=50` → {"cpu": "10", ...}; ValueError says which item is wrong."""
    quota: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{item!r} is not resource=quantity")
        quota[key] = value
    return validate_quota(quota)


def validate_quota(quota: dict[str, str]) -> dict[str, str]:
    for key, value in quota.items():
        if not QUOTA_KEY.fullmatch(key) or len(key) > 253:
            raise ValueError(f"{key!r} is not a resource name")
        if not QUANTITY.fullmatch(str(value)):
            raise ValueError(f"{key}={value!r} is not a Kubernetes quantity (like 10, 500m, 20Gi)")
    return {k: str(v) for k, v in quota.items()}


def _group_list(groups: list[str]) -> list[str]:
    usable_names(groups, what="group name")
    for group in groups:
        if group.startswith("system:"):
            raise ValueError(f"{group!r}: system: groups cannot be tenant groups")
    return groups


class TenantSpec(BaseModel):
    """What the platform engineer asked for. Changing it bumps `generation`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    admin_groups: Annotated[list[str], Field(min_length=1, max_length=MAX_GROUPS)]
    view_groups: Annotated[list[str], Field(max_length=MAX_GROUPS)] = []
    k8s_version: str = DEFAULT_VERSION
    ha: Annotated[int, Field(ge=1, le=7)] = 1
    quota: dict[str, str] = {}
    isolate: bool = False
    values: dict[str, Any] = {}
    auto_wake: bool | None = None
    # tokens the tenant's own API server issued (ServiceAccount tokens) pass through, checked
    # by a TokenReview there, as for a static tenant (README "Tenant-native tokens")
    token_passthrough: bool = False
    service_account_issuer: Annotated[str | None, Field(max_length=MAX_ISSUER)] = None
    desired: Desired = Desired.running

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TENANT_NAME.fullmatch(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', max 63")
        if v in RESERVED_NAMES or v.startswith(("kube-", "vgate-", "system")):
            raise ValueError(f"{v!r} is reserved")
        return v

    @field_validator("admin_groups", "view_groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return _group_list(v)

    @field_validator("k8s_version")
    @classmethod
    def _version(cls, v: str, info: ValidationInfo) -> str:
        """A minor version ("v1.31.4" → "1.31"). With `context={"versions": ...}` (a
        `KubernetesVersions`, what the provisioner can run) it must also be one of those."""
        v = minor_of(v)
        versions = (info.context or {}).get("versions")
        problem = versions.problem(v) if versions is not None else None
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("ha")
    @classmethod
    def _ha(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("must be odd (1, 3, 5 or 7): etcd needs a majority")
        return v

    @field_validator("quota")
    @classmethod
    def _quota(cls, v: dict[str, str]) -> dict[str, str]:
        return validate_quota(v)

    @field_validator("service_account_issuer")
    @classmethod
    def _issuer(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The `iss` of the tenant's ServiceAccount tokens: one printable word, only with
        `token_passthrough` (None: the gateway asks the tenant)."""
        if v is None:
            return v
        if not v or not v.isprintable() or any(c.isspace() for c in v):
            raise ValueError("must be an issuer (`iss`): printable, no spaces")
        if not info.data.get("token_passthrough"):
            raise ValueError("applies only with token_passthrough")
        return v


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str
    status: str  # "True" | "False" | "Unknown", as in Kubernetes
    reason: str
    message: str = ""
    last_transition: float = Field(default_factory=time.time)


class RouteInfo(BaseModel):
    """How the gateway reaches the tenant. Paths only: the token and CA stay in their files."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    server: str
    ca_file: str | None = None
    ca_sha256: str | None = None  # changes when the CA does, so workers rebuild TLS
    token_file: str
    server_name: str | None = None
    paused: bool = False
    auto_wake: bool = False
    token_passthrough: bool = False  # the spec's, as the gateway routes it now
    service_account_issuer: str | None = None


def new_error_reference() -> str:
    """A fresh reference to a failed step's error: random, so it tells nothing of the error's
    text (a digest would confirm a guess of it). Tenant users quote it; operators find it
    next to the error (`vgate tenant show`, the lifecycle log line, the gateway's audit line)."""
    return secrets.token_hex(5)


class TenantStatus(BaseModel):
    """What the reconciler observed. `error_reference` names the episode of `last_error`: drawn
    when a step fails with a new error, kept while it fails with the same one, gone with it.
    Records stored before it existed have a `last_error` without one until the next failure."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    phase: Phase = Phase.pending
    step: str | None = None
    conditions: list[Condition] = []
    last_error: str | None = None
    error_reference: Annotated[str, Field(pattern=ERROR_REFERENCE)] | None = None
    failures: int = 0
    observed_generation: int = 0
    k8s_version: str | None = None
    route: RouteInfo | None = None
    hostname: str | None = None

    def with_condition(self, condition: Condition) -> TenantStatus:
        """Replace the condition of the same type; keep its transition time if unchanged."""
        kept = [c for c in self.conditions if c.type != condition.type]
        old = next((c for c in self.conditions if c.type == condition.type), None)
        if old is not None and old.status == condition.status:
            condition = condition.model_copy(update={"last_transition": old.last_transition})
        return self.model_copy(update={"conditions": [*kept, condition]})

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def failed(self, error: str, *, fresh: str) -> TenantStatus:
        """This status after one more failed pass with `error`: the same episode keeps its
        `error_reference` (operators grep one id while a step keeps failing the same way);
        another error, or one recorded without a reference, takes `fresh`."""
        same = error == self.last_error and self.error_reference is not None
        return self.model_copy(
            update={
                "last_error": error,
                "error_reference": self.error_reference if same else fresh,
                "failures": self.failures + 1,
            }
        )


#: fields added after records were first stored: the stores write them only when set, so a
#: replica of the previous version (whose models refuse unknown fields) still reads every
#: record that does not use them, as it must while a rolling upgrade runs both versions
ADDED_LATER = frozenset({"token_passthrough", "service_account_issuer"})
#: where a stored status keeps `error_reference`: the message of a condition of this type.
#: Unlike an optional feature the reference is written on every failed step, so a field of
#: its own would make a replica of the version before it (whose status refuses unknown
#: fields) drop every failing tenant during a rolling upgrade; a condition of any type is
#: something every version reads
REFERENCE_CONDITION = "ErrorReference"


def _without_unset_additions(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not (k in ADDED_LATER and v in (None, False))}


def stored_spec(spec: TenantSpec, **dump: Any) -> dict[str, Any]:
    """The spec as the stores write it (JSON-ready); `dump`: `model_dump`'s options."""
    return _without_unset_additions(spec.model_dump(mode="json", **dump))


def stored_status(status: TenantStatus) -> dict[str, Any]:
    """The status as the stores write it (JSON-ready), its route included; the error
    reference as a `REFERENCE_CONDITION` condition (`loaded_status` reads it back)."""
    data = _without_unset_additions(status.model_dump(mode="json"))
    reference = data.pop("error_reference", None)
    if reference is not None:
        data["conditions"] = [
            *data["conditions"],
            {
                "type": REFERENCE_CONDITION,
                "status": "True",
                "reason": "StepFailed",
                "message": reference,
            },
        ]
    if data.get("route") is not None:
        data["route"] = _without_unset_additions(data["route"])
    return data


def loaded_status(data: dict[str, Any]) -> TenantStatus:
    """A status as `stored_status` wrote it (or a version before it did), validated: a
    reference that is not ten hex digits is refused like any other invalid field."""
    conditions = data.get("conditions") or []
    references = [
        c for c in conditions if isinstance(c, dict) and c.get("type") == REFERENCE_CONDITION
    ]
    if references:
        kept = [c for c in conditions if c not in references]
        data = {**data, "conditions": kept, "error_reference": references[-1].get("message")}
    return TenantStatus.model_validate(data)


class TenantRecord(BaseModel):
    """A stored tenant. `version` changes on every write (optimistic concurrency)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: TenantSpec
    status: TenantStatus = TenantStatus()
    version: int = 0
    generation: int = 1
    created_at: float = 0.0
    last_activity: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name
