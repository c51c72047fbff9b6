"""Decide what an authenticated identity may be in one tenant's cluster."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.identity import Deny, Grant, Identity
from gateway.policy.load import LoadedPolicy
from gateway.policy.model import ROLE_GROUP_PREFIX

ISSUER_EXTRA = "vgate.io/issuer"
TENANT_EXTRA = "vgate.io/tenant"


@dataclass(frozen=True, slots=True)
class _Rule:
    role: str
    groups: frozenset[str]
    users: frozenset[str]
    where: str


class PolicyEngine:
    """Deny by default; every matching rule adds its role, impersonated as `vgate:<role>`."""

    def __init__(self, policies: list[LoadedPolicy]) -> None:
        self._by_tenant: dict[str, list[_Rule]] = {}
        for loaded in policies:
            for role, rule in loaded.policy.roles.items():
                self._by_tenant.setdefault(loaded.policy.tenant, []).append(
                    _Rule(
                        role,
                        frozenset(rule.groups),
                        frozenset(rule.users),
                        f"{loaded.file}:{loaded.role_lines.get(role, 0)}",
                    )
                )

    def tenants_with_rules(self) -> set[str]:
        return set(self._by_tenant)

    def decide(self, identity: Identity, tenant: str) -> Grant | Deny:
        roles: dict[str, None] = {}
        reasons: list[str] = []
        groups = set(identity.groups)
        for rule in (*self._by_tenant.get(tenant, ()), *self._by_tenant.get("*", ())):
            if identity.username in rule.users:
                roles.setdefault(rule.role)
                reasons.append(f"{rule.role}: user {identity.username} ({rule.where})")
                continue
            matched = rule.groups & groups
            if matched:
                roles.setdefault(rule.role)
                reasons.append(f"{rule.role}: group {sorted(matched)[0]} ({rule.where})")
        if not roles:
            return Deny(tenant, f"no role for {identity.username} on tenant {tenant}")
        ordered = tuple(sorted(roles))
        return Grant(
            tenant=tenant,
            user=identity.username,
            uid=identity.uid,
            groups=tuple(ROLE_GROUP_PREFIX + r for r in ordered),
            roles=ordered,
            extra=((ISSUER_EXTRA, (identity.issuer,)), (TENANT_EXTRA, (tenant,))),
            reasons=tuple(reasons),
        )
