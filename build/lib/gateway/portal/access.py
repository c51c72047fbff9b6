"""Which tenants an identity may use, and with which roles: one injectable function.

The default asks the gateway's own policy engine about every registered tenant, so the
portal shows exactly what the gateway would allow, directory (AD) groups included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.directory import Directory, lookup_value
from gateway.identity import Grant, Identity
from gateway.policy import PolicyEngine
from gateway.registry import TenantRegistry


@dataclass(frozen=True)
class TenantRole:
    tenant: str
    roles: tuple[str, ...]


TenantAccess = Callable[[Identity], Awaitable[list[TenantRole]]]


def policy_access(registry: TenantRegistry, policy: PolicyEngine,
                  directory: Directory | None = None) -> TenantAccess:
    """The tenants (sorted by name) where `policy` grants `identity` at least one role, with
    the identity's directory groups when there is a directory (its `DirectoryUnavailable`
    propagates: no answer is not "no tenants")."""

    async def tenants_for(identity: Identity) -> list[TenantRole]:
        membership = None
        if directory is not None:
            value = lookup_value(identity, directory.config.user_claim)
            if value is None:
                return []
            membership = await directory.membership(value)
        out = []
        for name in registry.names():
            decision = policy.decide(identity, name, membership)
            if isinstance(decision, Grant):
                out.append(TenantRole(name, decision.roles))
        return out

    return tenants_for
