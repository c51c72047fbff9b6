"""Decide what an authenticated identity may be in one tenant's cluster."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.directory.entry import Membership
from gateway.identity import Deny, Grant, Identity
from gateway.names import kube
from gateway.names.dn import normalize_dn
from gateway.policy.load import LoadedPolicy
from gateway.policy.model import ROLE_GROUP_PREFIX

ISSUER_EXTRA = "vgate.io/issuer"
TENANT_EXTRA = "vgate.io/tenant"
DIRECTORY_GROUP_PREFIX = "ad:"
MAX_GROUP_NAME = 512
MAX_FORWARDED_GROUPS = 256
MAX_REMEMBERED_DECISIONS = 4096


@dataclass(frozen=True, slots=True)
class _Rule:
    role: str
    groups: frozenset[str]
    users: frozenset[str]
    where: str
    directory_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Forward:
    pattern: re.Pattern[str]
    where: str


def _compile(policies: list[LoadedPolicy]
             ) -> tuple[dict[str, list[_Rule]], dict[str, list[_Forward]]]:
    """Rules by tenant and directory-group forwarding patterns by tenant."""
    by_tenant: dict[str, list[_Rule]] = {}
    forward: dict[str, list[_Forward]] = {}
    for loaded in policies:
        tenant = loaded.policy.tenant
        for role, rule in loaded.policy.roles.items():
            by_tenant.setdefault(tenant, []).append(
                _Rule(
                    role,
                    frozenset(rule.groups),
                    frozenset(rule.users),
                    f"{loaded.file}:{loaded.role_lines.get(role, 0)}",
                    frozenset(rule.directory_groups),
                )
            )
        fwd = loaded.policy.forward_directory_groups
        if fwd is not None:
            forward.setdefault(tenant, []).append(
                _Forward(re.compile(fwd.match), f"{loaded.file}:{loaded.forward_line}"))
    return by_tenant, forward


def forwarded_name(dn: str) -> str | None:
    """The stable group name a forwarded directory group is impersonated as, or None when
    it could not travel exactly as written (the name gate, `gateway.names.kube`), is not
    ASCII, is too long, or its DN holds a control, format or non-ASCII space character
    (which normalizing would have turned into an escape)."""
    if not dn.isprintable():
        return None
    try:
        name = DIRECTORY_GROUP_PREFIX + normalize_dn(dn)
    except ValueError:
        return None
    if len(name) > MAX_GROUP_NAME or not name.isascii() or not kube.is_safe(name, "group"):
        return None
    return name


class PolicyEngine:
    """Deny by default; every matching rule adds its role, impersonated as `vgate:<role>`.

    With a directory configured, `decide` also gets the user's `Membership`: rules match
    directory groups by normalized DN or SID, an inactive or unknown account is denied,
    and groups matching the tenant's `forward_directory_groups` are impersonated too.

    Decisions are remembered per (identity, tenant, membership) *object*: the token cache and
    the directory cache hand out the same immutable objects request after request, so a
    repeat costs one dict lookup, and the same `Grant` object comes back (later steps key
    their own per-grant work on it). Changing stored roles forgets every decision.

    `replace` swaps in new policy files on a running gateway: the rules change at once for
    the next decision, every remembered decision is forgotten, and the lifecycle manager's
    stored roles stay."""

    def __init__(self, policies: list[LoadedPolicy]) -> None:
        self._stored: dict[str, tuple[_Rule, ...]] = {}
        self._decided: dict[tuple[int, str, int], tuple[Identity, Membership | None,
                                                        Grant | Deny]] = {}
        self._by_tenant, self._forward = _compile(policies)
        self.generation = 1  # which set of policy files decides: +1 at every `replace`

    def replace(self, policies: list[LoadedPolicy]) -> None:
        """Use `policies` from the next decision on (validated by the caller)."""
        self._by_tenant, self._forward = _compile(policies)
        self._decided.clear()
        self.generation += 1

    def tenants_with_rules(self) -> set[str]:
        return set(self._by_tenant) | set(self._stored)

    def set_stored_roles(self, tenant: str, roles: Mapping[str, Iterable[str]] | None) -> None:
        """Roles kept with a lifecycle-managed tenant (role → groups), on top of the policy
        files; None forgets them."""
        self._decided.clear()
        if roles is None:
            self._stored.pop(tenant, None)
            return
        self._stored[tenant] = tuple(
            _Rule(role, frozenset(groups), frozenset(), f"tenant {tenant} record")
            for role, groups in roles.items() if groups
        )

    def decide(
        self, identity: Identity, tenant: str, directory: Membership | None = None
    ) -> Grant | Deny:
        key = (id(identity), tenant, id(directory))
        hit = self._decided.get(key)
        if hit is not None and hit[0] is identity and hit[1] is directory:
            return hit[2]  # the ids are of objects the entry keeps alive: no reuse
        decision = self._decide(identity, tenant, directory)
        if len(self._decided) >= MAX_REMEMBERED_DECISIONS:
            self._decided.clear()
        self._decided[key] = (identity, directory, decision)
        return decision

    def _decide(
        self, identity: Identity, tenant: str, directory: Membership | None
    ) -> Grant | Deny:
        if directory is not None and not directory.active:
            return Deny(tenant, f"{identity.username}: directory account "
                                f"{directory.lookup!r} {directory.why_inactive}")
        roles: dict[str, None] = {}
        reasons: list[str] = []
        via_directory: list[tuple[str, str]] = []
        groups = set(identity.groups)
        keys = directory.keys if directory is not None else frozenset()
        for rule in (*self._by_tenant.get(tenant, ()), *self._stored.get(tenant, ()),
                     *self._by_tenant.get("*", ())):
            if identity.username in rule.users:
                roles.setdefault(rule.role)
                reasons.append(f"{rule.role}: user {identity.username} ({rule.where})")
                continue
            matched = rule.groups & groups
            if matched:
                roles.setdefault(rule.role)
                reasons.append(f"{rule.role}: group {sorted(matched)[0]} ({rule.where})")
                continue
            matched = rule.directory_groups & keys
            if matched and directory is not None:
                key = sorted(matched)[0]
                group = directory.group_for_key(key)
                label = (group.dn or group.sid) if group else key
                roles.setdefault(rule.role)
                reasons.append(f"{rule.role}: directory group {label} ({rule.where})")
                via_directory.append((rule.role, label))
        if not roles:
            return Deny(tenant, f"no role for {identity.username} on tenant {tenant}")
        ordered = tuple(sorted(roles))
        role_groups = tuple(ROLE_GROUP_PREFIX + r for r in ordered)
        return Grant(
            tenant=tenant,
            user=identity.username,
            uid=identity.uid,
            groups=role_groups + self._forwarded(tenant, directory),
            roles=ordered,
            extra=((ISSUER_EXTRA, (identity.issuer,)), (TENANT_EXTRA, (tenant,))),
            reasons=tuple(reasons),
            directory_groups=tuple(via_directory),
        )

    def _forwarded(self, tenant: str, directory: Membership | None) -> tuple[str, ...]:
        if directory is None:
            return ()
        rules = (*self._forward.get(tenant, ()), *self._forward.get("*", ()))
        if not rules:
            return ()
        memo_key = ("forward", tenant, id(self), self.generation)
        memoized = directory.memo.get(memo_key)
        if memoized is not None:
            return memoized
        names: dict[str, None] = {}
        for group in directory.groups:
            if group.dn is None or not any(r.pattern.search(group.dn) for r in rules):
                continue
            name = forwarded_name(group.dn)
            if name is not None:
                names.setdefault(name)
            if len(names) >= MAX_FORWARDED_GROUPS:
                break
        forwarded = tuple(sorted(names))
        directory.memo[memo_key] = forwarded
        return forwarded
