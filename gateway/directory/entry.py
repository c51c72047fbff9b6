"""What a directory lookup found: the user's entry and every group it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.names.dn import normalize_dn


@dataclass(frozen=True, slots=True)
class DirectoryGroup:
    """One group of the user; `dn` is None for a SID that did not resolve under the group
    base (a builtin or foreign group); `via` is the nesting chain (explain only)."""

    sid: str
    dn: str | None
    name: str
    via: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Membership:
    """The directory's answer for one user. `keys` holds every normalized group DN and
    every group SID, which is what policies match against; `memo` lets the policy engine
    keep per-tenant results with the (cached, reused) answer."""

    lookup: str
    found: bool
    dn: str | None = None
    sid: str | None = None
    guid: str | None = None
    disabled: bool = False
    locked: bool = False
    groups: tuple[DirectoryGroup, ...] = ()
    method: str = ""
    keys: frozenset[str] = field(default=frozenset(), compare=False)
    by_key: dict[str, DirectoryGroup] = field(default_factory=dict, compare=False, repr=False)
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.found and not self.disabled and not self.locked

    @property
    def why_inactive(self) -> str:
        if not self.found:
            return "not found in the directory"
        if self.disabled:
            return "account disabled in the directory"
        if self.locked:
            return "account locked out in the directory"
        return ""

    def group_for_key(self, key: str) -> DirectoryGroup | None:
        """The group a policy key (normalized DN or SID) refers to."""
        return self.by_key.get(key)


def membership(
    lookup: str,
    *,
    dn: str,
    sid: str | None,
    guid: str | None,
    disabled: bool,
    locked: bool,
    groups: list[DirectoryGroup],
    method: str,
) -> Membership:
    """A found user; inactive accounts carry no groups at all."""
    if disabled or locked:
        groups = []
    by_key: dict[str, DirectoryGroup] = {}
    for group in groups:
        by_key[group.sid] = group
        if group.dn:
            try:
                by_key[normalize_dn(group.dn)] = group
            except ValueError:
                continue
    return Membership(
        lookup,
        True,
        dn,
        sid,
        guid,
        disabled,
        locked,
        tuple(groups),
        method,
        frozenset(by_key),
        by_key,
    )


def not_found(lookup: str) -> Membership:
    return Membership(lookup, False)
