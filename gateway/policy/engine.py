"""Decide what an authenticated identity may be in one tenant's cluster."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config.model import Impersonation
from gateway.directory.entry import Membership
from gateway.identity import Deny, Grant, Identity, TooLarge
from gateway.names import kube
from gateway.names.dn import normalize_dn
from gateway.policy.load import LoadedPolicy
from gateway.policy.model import ROLE_GROUP_PREFIX
from gateway.rewrite import impersonation_bytes

DIRECTORY_GROUP_PREFIX = "ad:"
MAX_GROUP_NAME = 512
MAX_REMEMBERED_DECISIONS = 4096


@dataclass(frozen=True, slots=True)
class _Rule:
    role: str
    groups: frozenset[str]
    users: frozenset[str]
    where: str
    directory_groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Scope:
    """What one tenant forwards of a user's own groups (`forward_groups`)."""

    mode: str = "roles"
    patterns: tuple[re.Pattern[str], ...] = ()
    names: frozenset[str] = frozenset()

    def listed(self, name: str, searched: str) -> bool:
        """On the allow-list: `name` listed, or `searched` matching an expression."""
        return name in self.names or any(p.search(searched) for p in self.patterns)


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
    directory groups by normalized DN or SID, and an inactive or unknown account is denied.
    The tenant's `forward_groups` picks which of the user's own groups (token and directory)
    are impersonated too; a grant over the `Impersonation` caps is `TooLarge` (431). A
    tenant-native identity (reviewed by a tenant's TokenReview) is granted as itself, at
    that tenant only: it goes upstream with its own token.

    Decisions are remembered per (identity, tenant, membership) *object*: the token cache and
    the directory cache hand out the same immutable objects request after request, so a
    repeat costs one dict lookup, and the same `Grant` object comes back (later steps key
    their own per-grant work on it). Changing stored roles forgets every decision.

    `replace` swaps in new policy files on a running gateway: the rules change at once for
    the next decision, every remembered decision is forgotten, and the lifecycle manager's
    stored roles stay."""

    def __init__(self, policies: list[LoadedPolicy], caps: Impersonation | None = None) -> None:
        self.caps = caps or Impersonation()
        self._stored: dict[str, tuple[_Rule, ...]] = {}
        self._decided: dict[
            tuple[int, str, int], tuple[Identity, Membership | None, Grant | Deny]
        ] = {}
        # decisions by what they depend on: a user's next token is a new `Identity` object
        # with the same name, uid and groups, and gets the same decision (the same `Grant`
        # object, so the per-grant work downstream is not done again either)
        self._by_value: dict[tuple, tuple[Membership | None, Grant | Deny]] = {}
        self._load(policies)
        self.generation = 1  # which set of policy files decides: +1 at every `replace`

    def replace(self, policies: list[LoadedPolicy]) -> None:
        """Use `policies` from the next decision on (validated by the caller)."""
        self._load(policies)
        self._forget()
        self.generation += 1

    def _load(self, policies: list[LoadedPolicy]) -> None:
        """Compile the rules and the `forward_groups` settings of `policies`, by tenant."""
        by_tenant: dict[str, list[_Rule]] = {}
        modes: dict[str, str] = {}
        patterns: dict[str, list[re.Pattern[str]]] = {}
        names: dict[str, set[str]] = {}
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
            fwd = loaded.policy.forwarding
            if fwd is not None:
                if "mode" in fwd.model_fields_set:
                    modes[tenant] = fwd.mode
                if fwd.match is not None:
                    patterns.setdefault(tenant, []).append(re.compile(fwd.match))
                names.setdefault(tenant, set()).update(fwd.names)
        self._by_tenant, self._modes, self._patterns, self._names = (
            by_tenant,
            modes,
            patterns,
            names,
        )
        self._scopes: dict[str, _Scope] = {}

    def scope(self, tenant: str) -> _Scope:
        """The tenant's `forward_groups`: its own mode, else the `*` file's, else `roles`;
        the allow-lists of both."""
        scope = self._scopes.get(tenant)
        if scope is None:
            pair = (tenant, "*")
            scope = _Scope(
                self._modes.get(tenant) or self._modes.get("*") or "roles",
                tuple(p for t in pair for p in self._patterns.get(t, ())),
                frozenset(n for t in pair for n in self._names.get(t, ())),
            )
            if len(self._scopes) >= MAX_REMEMBERED_DECISIONS:
                self._scopes.clear()
            self._scopes[tenant] = scope
        return scope

    def tenants_with_rules(self) -> set[str]:
        return set(self._by_tenant) | set(self._stored)

    def set_stored_roles(self, tenant: str, roles: Mapping[str, Iterable[str]] | None) -> None:
        """Roles kept with a lifecycle-managed tenant (role → groups), on top of the policy
        files; None forgets them."""
        self._forget()
        if roles is None:
            self._stored.pop(tenant, None)
            return
        self._stored[tenant] = tuple(
            _Rule(role, frozenset(groups), frozenset(), f"tenant {tenant} record")
            for role, groups in roles.items()
            if groups
        )

    def decide(
        self, identity: Identity, tenant: str, directory: Membership | None = None
    ) -> Grant | Deny:
        key = (id(identity), tenant, id(directory))
        hit = self._decided.get(key)
        if hit is not None and hit[0] is identity and hit[1] is directory:
            return hit[2]  # the ids are of objects the entry keeps alive: no reuse
        if identity.reviewed_by is None:  # a tenant-native one also depends on its claims
            value = (
                identity.username,
                identity.uid,
                identity.groups,
                identity.issuer,
                identity.groups_overage,
                tenant,
                id(directory),
            )
            known = self._by_value.get(value)
            if known is not None and known[0] is directory:
                decision = known[1]
            else:
                decision = self._decide(identity, tenant, directory)
                if len(self._by_value) >= MAX_REMEMBERED_DECISIONS:
                    self._by_value.clear()
                self._by_value[value] = (directory, decision)
        else:
            decision = self._decide(identity, tenant, directory)
        if len(self._decided) >= MAX_REMEMBERED_DECISIONS:
            self._decided.clear()
        self._decided[key] = (identity, directory, decision)
        return decision

    def _forget(self) -> None:
        """Every remembered decision (the rules changed)."""
        self._decided.clear()
        self._by_value.clear()

    def _decide(
        self, identity: Identity, tenant: str, directory: Membership | None
    ) -> Grant | Deny:
        if identity.reviewed_by is not None:
            return _tenant_native(identity, tenant)
        if directory is not None and not directory.active:
            return Deny(
                tenant,
                f"{identity.username}: directory account "
                f"{directory.lookup!r} {directory.why_inactive}",
            )
        roles: dict[str, None] = {}
        reasons: list[str] = []
        via_directory: list[tuple[str, str]] = []
        named: set[str] = set()  # token groups and directory keys the rules name
        referenced = self.scope(tenant).mode == "referenced"
        groups = set(identity.groups)
        keys = directory.keys if directory is not None else frozenset()
        for rule in (
            *self._by_tenant.get(tenant, ()),
            *self._stored.get(tenant, ()),
            *self._by_tenant.get("*", ()),
        ):
            if referenced:
                named |= rule.groups | rule.directory_groups
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
        forwarded, dropped = self._forwarded(tenant, identity, directory, named)
        grant = Grant(
            tenant=tenant,
            user=identity.username,
            uid=identity.uid,
            groups=role_groups + forwarded,
            roles=ordered,
            # no extras: the tenant's API server authorizes each impersonated attribute on
            # every request, and what an issuer or tenant extra would say is in the
            # gateway's audit line, found by the request's Audit-ID (README "What leaves")
            extra=(),
            reasons=tuple(reasons),
            directory_groups=tuple(via_directory),
            dropped_groups=dropped,
        )
        return self._capped(grant)

    def _forwarded(
        self, tenant: str, identity: Identity, directory: Membership | None, named: set[str]
    ) -> tuple[tuple[str, ...], int]:
        """The user's own groups this tenant forwards (token groups as they are, directory
        groups as `ad:<normalized DN>`), and how many of the user's groups were left out."""
        scope = self.scope(tenant)
        everything = scope.mode == "all"
        referenced = everything or scope.mode == "referenced"
        names: dict[str, None] = {}
        candidates = len(identity.groups)
        for group in identity.groups:
            if everything or (referenced and group in named) or scope.listed(group, group):
                names.setdefault(group)
        if directory is not None:
            candidates += len(directory.groups)
            chosen = (
                {id(directory.by_key[k]) for k in named if k in directory.by_key}
                if referenced and not everything
                else set()
            )
            for entry in directory.groups:
                name = forwarded_name(entry.dn) if entry.dn is not None else None
                if name is None:
                    continue  # nothing it could travel as (a SID outside the group base)
                if everything or id(entry) in chosen or scope.listed(name, entry.dn or ""):
                    names.setdefault(name)
        return tuple(sorted(names)), max(0, candidates - len(names))

    def _capped(self, grant: Grant) -> Grant | TooLarge:
        """The grant, or `TooLarge` when its impersonation headers pass a cap."""
        caps, count = self.caps, len(grant.groups)
        if count > caps.max_groups:
            limit = f"{count} groups, more than impersonation.max_groups ({caps.max_groups})"
        else:
            size = impersonation_bytes(grant)
            if size <= caps.max_header_bytes:
                return grant
            limit = (
                f"{size} bytes of Impersonate-* headers, more than "
                f"impersonation.max_header_bytes ({caps.max_header_bytes})"
            )
        return TooLarge(
            grant.tenant,
            f"impersonation too large for {grant.user}: {limit}",
            f'the identity the gateway would send to tenant "{grant.tenant}" for you is too '
            f"large: {limit} allow; ask the platform team to forward fewer groups "
            "(forward_groups)",
        )


def _tenant_native(identity: Identity, tenant: str) -> Grant | Deny:
    """A token the tenant's own TokenReview vouched for, at that tenant only. It is
    forwarded as itself, so the grant impersonates nothing: it names who the tenant said
    the caller is (for the audit line and the rate limits). `system:` names are the
    tenant's own here (a ServiceAccount), not the IdP's, so no guard applies."""
    if identity.reviewed_by != tenant:
        return Deny(
            tenant, f"token reviewed by tenant {identity.reviewed_by} used at tenant {tenant}"
        )
    extra = identity.claims.get("extra") or {}
    return Grant(
        tenant=tenant,
        user=identity.username,
        uid=identity.uid,
        groups=identity.groups,
        roles=(),
        extra=tuple((k, tuple(v)) for k, v in sorted(extra.items())),
        reasons=(f"tenant-native token: TokenReview at {tenant}",),
    )
