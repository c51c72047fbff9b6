"""Which tenants an identity may use, and with which roles: one injectable function.

The default asks the gateway's own policy engine about every registered tenant, so the
portal shows exactly what the gateway would allow. A directory-groups step (AD) plugs in
by wrapping it: resolve the identity's groups first, then call the policy lookup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.identity import Grant, Identity
from gateway.policy import PolicyEngine
from gateway.registry import TenantRegistry


@dataclass(frozen=True)
class TenantRole:
    tenant: str
    roles: tuple[str, ...]


TenantAccess = Callable[[Identity], Awaitable[list[TenantRole]]]


def policy_access(registry: TenantRegistry, policy: PolicyEngine) -> TenantAccess:
    """The tenants (sorted by name) where `policy` grants `identity` at least one role."""

    async def tenants_for(identity: Identity) -> list[TenantRole]:
        out = []
        for name in registry.names():
            decision = policy.decide(identity, name)
            if isinstance(decision, Grant):
                out.append(TenantRole(name, decision.roles))
        return out

    return tenants_for
