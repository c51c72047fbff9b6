"""Policy files: per tenant, which users and groups get which role."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.identity import usable_names
from gateway.names.dn import normalize_dn
from gateway.names.sid import is_sid

ROLE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ROLE_GROUP_PREFIX = "vgate:"
WELL_KNOWN_ROLES = ("cluster-admin", "admin", "edit", "view")


def _group_ref(name: str) -> str:
    """A directory group named by DN or SID, normalized (DN lowercased, SID uppercased)."""
    if name.upper().startswith("S-1-"):
        if not is_sid(name.upper()):
            raise ValueError(f"malformed SID: {name[:80]!r}")
        return name.upper()
    try:
        return normalize_dn(name)
    except ValueError:
        raise ValueError(
            f"not a group DN or SID: {name[:80]!r} (write CN=…,OU=…,DC=… or S-1-5-21-…)"
        ) from None


DirectoryGroupRef = Annotated[str, AfterValidator(_group_ref)]


class RoleRule(BaseModel):
    """Who gets one role: token groups and/or usernames (both with the issuer's prefixes),
    and/or directory groups by DN or objectSid."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    groups: Annotated[list[str], Field(max_length=10_000)] = []
    users: Annotated[list[str], Field(max_length=10_000)] = []
    directory_groups: Annotated[list[DirectoryGroupRef], Field(max_length=10_000)] = []

    @field_validator("directory_groups")
    @classmethod
    def _no_duplicates(cls, v: list[str]) -> list[str]:
        dups = sorted({n for n in v if v.count(n) > 1})
        if dups:
            raise ValueError(f"listed twice: {', '.join(dups)}")
        return v

    @field_validator("groups", "users")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return usable_names(v)


def _regex(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return v


Regex = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_regex)]


class ForwardGroups(BaseModel):
    """Which of the user's own groups are impersonated besides the role groups
    (`vgate:<role>`), for the tenant's own RBAC:

    - `roles`: none (only the allow-list below);
    - `referenced`: the groups this tenant's rules name (token groups, directory groups by
      DN or SID), and the allow-list;
    - `all`: every group of the user.

    The allow-list adds groups in `roles` and `referenced` mode: `match`, a regular
    expression searched in a token group's name (prefixed) and in a directory group's DN
    as the directory spells it; `names`, exact token group names. Directory groups travel
    as `ad:<normalized DN>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Literal["roles", "referenced", "all"] = "roles"
    match: Regex | None = None
    names: Annotated[list[str], Field(max_length=10_000)] = []

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return usable_names(v)


class ForwardDirectoryGroups(BaseModel):
    """The older spelling of `forward_groups: {match: …}`: directory groups whose DN
    matches `match` are also impersonated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: Regex


class PolicyFile(BaseModel):
    """One `policies/*.yaml` document. `tenant: "*"` applies to every tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tenant: str
    roles: dict[str, RoleRule]
    forward_groups: ForwardGroups | None = None
    forward_directory_groups: ForwardDirectoryGroups | None = None

    @model_validator(mode="after")
    def _one_forward_rule(self) -> PolicyFile:
        if self.forward_groups is not None and self.forward_directory_groups is not None:
            raise ValueError(
                "forward_directory_groups is the older spelling of "
                "forward_groups.match: use forward_groups only"
            )
        return self

    @property
    def forwarding(self) -> ForwardGroups | None:
        """`forward_groups`, or the older `forward_directory_groups` read as one."""
        if self.forward_directory_groups is not None:
            return ForwardGroups(match=self.forward_directory_groups.match)
        return self.forward_groups

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        if v != "*" and not ROLE_NAME.fullmatch(v):
            raise ValueError("must be a tenant name or '*'")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _role_names(cls, data: object, handler: Callable[[object], PolicyFile]) -> PolicyFile:
        """A role that is not a DNS label is reported at its own line."""
        roles = data.get("roles") if isinstance(data, dict) else None
        bad = (
            [r for r in roles if not (isinstance(r, str) and ROLE_NAME.fullmatch(r))]
            if isinstance(roles, dict)
            else []
        )
        if bad:
            raise ValidationError.from_exception_data(
                cls.__name__,
                [
                    {
                        "type": "value_error",
                        "loc": ("roles", role),
                        "ctx": {"error": ValueError(f"role {role!r} is not a DNS label")},
                        "input": role,
                    }
                    for role in bad
                ],
            )
        return handler(data)


def policy_schema() -> dict:
    """The JSON Schema of a policy file (`policies/schema.json` is this, for editors)."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "vgate policy file"
    return schema
