"""`vgate policy explain`: what the gateway would do for one user on one tenant, now."""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import GatewayConfig
from gateway.directory.entry import Membership
from gateway.directory.errors import DirectoryError
from gateway.directory.source import LdapSource
from gateway.identity import Deny, Identity
from gateway.policy import PolicyEngine
from gateway.rewrite import impersonation_block


def explain(
    config: GatewayConfig,
    engine: PolicyEngine,
    user: str,
    tenant: str,
    out: Callable[[str], None],
    *,
    username: str | None = None,
) -> int:
    """Print the directory entry, groups with their nesting chains, the roles with the rule
    that granted each and the impersonation headers (or why access is denied). 0 = allowed,
    1 = denied, 2 = the directory could not answer."""
    issuer = config.oidc.issuers[0]
    name = username or issuer.username_prefix + user
    membership: Membership | None = None
    if config.ldap is not None:
        try:
            source = LdapSource(config.ldap)
            membership = source.lookup(user, chains=True)
            source.close()
        except DirectoryError as exc:
            out(f"directory: cannot look up {user!r}: {exc}")
            out(
                "decision: the gateway answers 503 (fail closed) unless a cached answer is "
                "young enough"
            )
            return 2
        _print_membership(config, membership, out)
    else:
        out("directory: not configured (no ldap section); only token groups count")
    identity = Identity(
        username=name, uid="", groups=(), issuer=issuer.issuer, expires_at=0.0, claims={}
    )
    decision = engine.decide(identity, tenant, membership)
    if isinstance(decision, Deny):
        out(f"decision: DENY on tenant {tenant}: {decision.reason}")
        return 1
    out(f"decision: ALLOW on tenant {tenant} as {name} (token groups not considered here)")
    for reason in decision.reasons:
        out(f"  role {reason}")
    out("impersonation headers:")
    for line in impersonation_block(decision).decode().splitlines():
        out(f"  {line}")
    out("  (plus Impersonate-Uid from the token's subject and the per-request id extra)")
    return 0


def _print_membership(config: GatewayConfig, m: Membership, out: Callable[[str], None]) -> None:
    assert config.ldap is not None
    out(f"directory: {config.ldap.user_attribute}={m.lookup!r} under {config.ldap.user_base_dn}")
    if not m.found:
        out("  no entry found")
        return
    out(f"  entry: {m.dn}")
    out(f"  objectSid: {m.sid}  objectGUID: {m.guid}")
    if m.disabled or m.locked:
        out(f"  {m.why_inactive}: no groups count")
        return
    out(f"  {len(m.groups)} groups (via {m.method}):")
    for group in m.groups:
        chain = (
            " -> ".join(("user", *group.via, group.dn or group.sid))
            if group.via != ("?",)
            else f"{group.dn or group.sid} (chain not found through memberOf)"
        )
        out(f"    {group.name} [{group.sid}]")
        out(f"      {chain}")
