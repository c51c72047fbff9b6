"""The route registry: tenant name → how to reach and authenticate to its API server.

Static tenants come from the config; the lifecycle manager writes its own tenants here, and
with them the state of each tenant that is not Ready (`TenantState`): a tenant it knows but
cannot route to yet (being created, failing, being deleted) is answered with that state
instead of "not found". The request path reads routes, and notes each tenant's latest
request in `activity`, which the lifecycle manager drains (idle tenants may be paused).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import ClassVar
from urllib.parse import urlsplit

from gateway.config.model import Tenant as TenantConfig
from gateway.credentials import TokenFile
from gateway.http.tls_object import direct_records


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
    # builds the same TLS settings offering HTTP/2 (ALPN h2, then http/1.1), for the
    # long-running requests the forwarder multiplexes; None: plain HTTP, no HTTP/2
    multiplex_tls: Callable[[], SSLContext] | None = None
    authority: bytes = field(init=False)

    def __post_init__(self) -> None:
        default = 443 if self.ssl else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority = (host if self.port == default else f"{host}:{self.port}").encode()

    @functools.cached_property
    def ssl_multiplex(self) -> SSLContext | None:
        """`multiplex_tls()`, built on first use (a context costs up to ~20 ms to load its
        trust store: ten thousand tenants must not pay that at start-up)."""
        return self.multiplex_tls() if self.multiplex_tls is not None else None


@dataclass(frozen=True)
class TenantState:
    """What the lifecycle manager reports about a tenant that is not Ready: its phase
    ("Pending", "Provisioning", "Pausing", "Paused", "Deleting"), the step it is on, the last
    error of a failed step and how many passes failed in a row.

    Whoever has a role on the tenant learns the phase, the step, how often it failed and the
    error's `reference` (`describe`, `message`, `details`): a random id the lifecycle manager
    drew when the error was recorded (`TenantStatus.error_reference`), which tells nothing of
    the text; None for an error recorded before references were. The error's text is the
    host's: it can name host paths, host-cluster namespaces and hosts, command lines; it is
    for operators only (`describe_for_operators`: the audit line), never in a tenant's answer.
    """

    phase: str
    step: str | None = None
    last_error: str | None = None
    failures: int = 0
    reference: str | None = None

    MAX_ERROR: ClassVar[int] = 500  # characters of `last_error` in an operator's line

    @property
    def error(self) -> str | None:
        """`last_error`, bounded for a log line (operators only)."""
        e = self.last_error
        return e if e is None or len(e) <= self.MAX_ERROR else e[: self.MAX_ERROR] + "…"

    def describe(self) -> str:
        """One line for the tenant's users: the phase, the step, and when a step failed how
        often, with the error's reference (never its text)."""
        at = f', step "{self.step}"' if self.step else ""
        if self.phase == "Pending" and not self.step and not self.last_error:
            at = ": waiting for the lifecycle manager"
        if not self.last_error:
            return f"{self.phase}{at}"
        times = "once" if self.failures <= 1 else f"{self.failures} times in a row"
        ref = "no error reference recorded yet"  # an error stored before references were
        if self.reference:
            ref = f"error reference {self.reference}"
        return f"{self.phase}{at}; failed {times}, {ref}"

    def describe_for_operators(self) -> str:
        """`describe` and the last error's text (bounded): for the gateway's own log."""
        if not self.last_error:
            return self.describe()
        error = self.error or ""
        if self.step:  # the reconciler's errors start with the step's name
            error = error.removeprefix(f"{self.step}: ")
        return f"{self.describe()}, last error: {error}"

    @property
    def retry_after(self) -> int:
        """Seconds to wait before asking again. kubectl (client-go) retries a 503 that has a
        `Retry-After` up to 10 times: a tenant coming up is simply waited for (~50 s), one
        whose step failed is reported after ~10 s."""
        return 1 if self.last_error else 5

    def message(self, tenant: str) -> str:
        """What a client with a role on `tenant` is told about it in this state."""
        if self.phase == "Deleting":
            return f'tenant "{tenant}" is being deleted ({self.describe()})'
        if self.last_error:
            return (
                f'tenant "{tenant}" is not ready ({self.describe()}); the lifecycle '
                "manager keeps retrying: ask a platform administrator if this persists"
                + (" (quote the error reference)" if self.reference else "")
            )
        return f'tenant "{tenant}" is not ready yet ({self.describe()}); retry shortly'

    def details(self, tenant: str) -> dict:
        """A `Status`'s `details`: the phase, the step and the error reference as causes."""
        causes = [{"type": "TenantPhase", "message": self.phase}]
        if self.step:
            causes.append({"type": "TenantStep", "message": self.step})
        if self.last_error and self.reference:
            causes.append({"type": "TenantErrorReference", "message": self.reference})
        return {
            "name": tenant,
            "kind": "tenant",
            "retryAfterSeconds": self.retry_after,
            "causes": causes,
        }


def upstream_from_config(tenant: TenantConfig) -> Upstream:
    """Build the runtime `Upstream` for a statically configured tenant."""
    parts = urlsplit(tenant.upstream)
    https = parts.scheme == "https"
    token = TokenFile(tenant.token_file) if tenant.token_file else None
    return Upstream(
        name=tenant.name,
        host=parts.hostname or "",
        port=parts.port or (443 if https else 80),
        ssl=_tls_context(tenant, ["http/1.1"]) if https else None,
        server_hostname=(tenant.server_name or parts.hostname) if https else None,
        authorization=token.header if token else None,
        token_passthrough=tenant.token_passthrough,
        service_account_issuer=tenant.service_account_issuer,
        multiplex_tls=functools.partial(_tls_context, tenant, _H2_FIRST) if https else None,
    )


_H2_FIRST = ["h2", "http/1.1"]


def _tls_context(tenant: TenantConfig, protocols: list[str]) -> ssl.SSLContext:
    """TLS to the tenant's API server, offering `protocols` (ALPN)."""
    context = ssl.create_default_context(cafile=str(tenant.ca_file) if tenant.ca_file else None)
    if tenant.insecure_skip_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tenant.client_cert_file:
        context.load_cert_chain(str(tenant.client_cert_file), str(tenant.client_key_file))
    context.set_alpn_protocols(protocols)
    return direct_records(context)


class TenantRegistry:
    """Tenant name → `Upstream`, and → `TenantState` for the lifecycle's tenants that are not
    Ready. Readers see a whole entry or none, never half of one."""

    def __init__(self) -> None:
        self._tenants: dict[str, Upstream] = {}
        self._states: dict[str, TenantState] = {}
        self._listeners: list[Callable[[str], None]] = []
        # tenant → wall time of its latest forwarded request; drained by whoever records it
        self.activity: dict[str, float] = {}

    def get(self, name: str) -> Upstream | None:
        return self._tenants.get(name)

    def names(self) -> list[str]:
        return sorted(self._tenants)

    def state(self, name: str) -> TenantState | None:
        """The lifecycle's state of a tenant that is not Ready (None: Ready, or unknown)."""
        return self._states.get(name)

    def known_names(self) -> list[str]:
        """Every tenant the gateway knows: routable or not (yet)."""
        return sorted(self._tenants.keys() | self._states.keys())

    def set_states(self, states: dict[str, TenantState]) -> None:
        """Replace every tenant state at once."""
        self._states = dict(states)

    def set_state(self, name: str, state: TenantState | None) -> None:
        """One tenant's state (the lifecycle's route sync); None: it has none (Ready, gone)."""
        if state is None:
            self._states.pop(name, None)
        else:
            self._states[name] = state

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
