"""What a directory lookup found: the user's entry and every group it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.directory.dn import normalize_dn


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
    every group SID, which is what policies match against."""

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
        for group in self.groups:
            if group.sid == key or (group.dn and normalize_dn(group.dn) == key):
                return group
        return None


def membership(lookup: str, *, dn: str, sid: str | None, guid: str | None, disabled: bool,
               locked: bool, groups: list[DirectoryGroup], method: str) -> Membership:
    """A found user; inactive accounts carry no groups at all."""
    if disabled or locked:
        groups = []
    keys: set[str] = set()
    for group in groups:
        keys.add(group.sid)
        if group.dn:
            keys.add(normalize_dn(group.dn))
    return Membership(lookup, True, dn, sid, guid, disabled, locked, tuple(groups), method,
                      frozenset(keys))


def not_found(lookup: str) -> Membership:
    return Membership(lookup, False)
