"""Which tenants an identity may use, and with which roles: one injectable function.

The default asks the gateway's own policy engine about every tenant the gateway knows, so the
portal shows exactly what the gateway would allow, directory (AD) groups included — a tenant
that is not ready (being created, failing, paused, being deleted) with its state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.directory import Directory, lookup_value
from gateway.identity import Grant, Identity
from gateway.policy import PolicyEngine
from gateway.registry import TenantRegistry, TenantState


@dataclass(frozen=True)
class TenantRole:
    """A tenant the identity has `roles` on. `state`: the lifecycle's, when not Ready;
    `routable`: requests reach its API server (or wake it); `wakes`: a paused tenant's first
    request resumes it."""

    tenant: str
    roles: tuple[str, ...]
    state: TenantState | None = None
    routable: bool = True
    wakes: bool = False


TenantAccess = Callable[[Identity], Awaitable[list[TenantRole]]]


def policy_access(
    registry: TenantRegistry, policy: PolicyEngine, directory: Directory | None = None
) -> TenantAccess:
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
        for name in registry.known_names():
            decision = policy.decide(identity, name, membership)
            if isinstance(decision, Grant):
                upstream = registry.get(name)
                out.append(
                    TenantRole(
                        name,
                        decision.roles,
                        registry.state(name),
                        routable=upstream is not None,
                        wakes=upstream is not None and upstream.wake is not None,
                    )
                )
        return out

    return tenants_for
