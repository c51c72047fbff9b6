"""The small immutable values every step of the request path shares."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the caller is, as established by authentication (prefixes already applied)."""

    username: str
    uid: str
    groups: tuple[str, ...]
    issuer: str
    expires_at: float
    claims: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True, slots=True)
class Grant:
    """What the gateway will impersonate upstream for one (identity, tenant)."""

    tenant: str
    user: str
    uid: str
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]
    reasons: tuple[str, ...] = ()
    directory_groups: tuple[tuple[str, str], ...] = ()  # (role, directory group) pairs


@dataclass(frozen=True, slots=True)
class Deny:
    """Why a caller may not use a tenant; `reason` is for the audit log, never the client."""

    tenant: str
    reason: str
