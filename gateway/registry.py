"""The route registry: tenant name → how to reach and authenticate to its API server.

Static tenants come from the config; the lifecycle manager writes its own tenants here.
The request path reads routes, and notes each tenant's latest request in `activity`, which
the lifecycle manager drains (idle tenants may be paused).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.config.model import Tenant as TenantConfig
from gateway.credentials import TokenFile


@dataclass(eq=False)
class Upstream:
    """A tenant's API server endpoint and the gateway's credential for it.

    A `paused` tenant's control plane is stopped: requests get 503, or — when `wake` is set —
    `await wake()` asks for a resume and returns True once a running entry replaced this one.
    With `token_passthrough`, tokens the tenant's own API server issued (ServiceAccount
    tokens, `iss` = `service_account_issuer`, or asked from the tenant when None) are
    checked there by a TokenReview and forwarded as they are.
    """

    name: str
    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    authorization: Callable[[], bytes] | None
    paused: bool = False
    wake: Callable[[], Awaitable[bool]] | None = None
    token_passthrough: bool = False
    service_account_issuer: str | None = None
    authority: bytes = field(init=False)

    def __post_init__(self) -> None:
        default = 443 if self.ssl else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = (host if self.port == default else f"{host}:{self.port}").encode()


def upstream_from_config(tenant: TenantConfig) -> Upstream:
    """Build the runtime `Upstream` for a statically configured tenant."""
    parts = urlsplit(tenant.upstream)
    context: ssl.SSLContext | None = None
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cafile=str(tenant.ca_file) if tenant.ca_file else None
        )
        if tenant.insecure_skip_tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tenant.client_cert_file:
            context.load_cert_chain(str(tenant.client_cert_file), str(tenant.client_key_file))
        context.set_alpn_protocols(["http/1.1"])
    token = TokenFile(tenant.token_file) if tenant.token_file else None
    return Upstream(
        name=tenant.name,
        host=parts.hostname or "",
        port=parts.port or (443 if parts.scheme == "https" else 80),
        ssl=context,
        server_hostname=(tenant.server_name or parts.hostname) if context else None,
        authorization=token.header if token else None,
        token_passthrough=tenant.token_passthrough,
        service_account_issuer=tenant.service_account_issuer,
    )


class TenantRegistry:
    """Tenant name → `Upstream`. Readers see a whole entry or none, never half of one."""

    def __init__(self) -> None:
        self._tenants: dict[str, Upstream] = {}
        self._listeners: list[Callable[[str], None]] = []
        # tenant → wall time of its latest forwarded request; drained by whoever records it
        self.activity: dict[str, float] = {}

    def get(self, name: str) -> Upstream | None:
        return self._tenants.get(name)

    def names(self) -> list[str]:
        return sorted(self._tenants)

    def put(self, upstream: Upstream) -> None:
        self._tenants[upstream.name] = upstream
        self._notify(upstream.name)

    def remove(self, name: str) -> None:
        if self._tenants.pop(name, None) is not None:
            self._notify(name)

    def drain_activity(self) -> dict[str, float]:
        """Take the activity seen since the last call."""
        seen, self.activity = self.activity, {}
        return seen

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(name)` whenever a tenant is added, replaced or removed."""
        self._listeners.append(listener)

    def _notify(self, name: str) -> None:
        for listener in self._listeners:
            listener(name)
