"""Group overage: when a token names its groups elsewhere instead of carrying them (Entra
ID's `_claim_names`/`hasgroups` for users in many groups), the directory's answer stands
in for the groups claim, so policy rules on token groups match as they would have."""

from __future__ import annotations

import dataclasses
from typing import Literal

from gateway.directory.entry import DirectoryGroup, Membership
from gateway.identity import Identity, usable_names

RESERVED_PREFIX = "system:"

NameForm = Literal["name", "sid", "dn"]


def _name(group: DirectoryGroup, form: NameForm) -> str | None:
    if form == "sid":
        return group.sid
    if form == "dn":
        return group.dn
    return group.name


def claim_groups(membership: Membership, form: NameForm, prefix: str) -> tuple[str, ...]:
    """The user's directory groups as the IdP would have put them in the groups claim:
    `prefix` + sAMAccountName (`name`), objectSid (`sid`) or DN (`dn`). Names that would be
    `system:` or could not travel in a header are left out."""
    names: dict[str, None] = {}
    for group in membership.groups:
        raw = _name(group, form)
        if not raw:
            continue
        name = prefix + raw
        if name.startswith(RESERVED_PREFIX) or name in names:
            continue
        try:
            usable_names([name], what="group name")
        except ValueError:
            continue
        names.setdefault(name)
    return tuple(names)


def with_directory_groups(
    identity: Identity, membership: Membership, form: NameForm, prefix: str
) -> Identity:
    """`identity` with its groups completed from `membership` (the same object for the
    same identity and answer, so later steps' per-identity caches keep working)."""
    key = ("overage", id(identity))
    hit = membership.memo.get(key)
    if hit is not None and hit[0] is identity:
        return hit[1]
    merged = tuple(dict.fromkeys((*identity.groups, *claim_groups(membership, form, prefix))))
    resolved = dataclasses.replace(identity, groups=merged)
    membership.memo[key] = (identity, resolved)
    return resolved
