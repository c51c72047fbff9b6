"""The state of one request as it goes through the steps of the request path.

The HTTP layer's `Exchange` knows the connection, the request head and the response; a
`Flow` holds what the steps found out about it — the tenant, the identity, the directory
groups, the grant — and how it ended (`Outcome` + reason), which the record step writes.
Every step reads and writes only here, so a step's inputs and outputs are visible in one
class instead of half in parameters and half on the exchange.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.directory.entry import Membership
    from gateway.http.exchange import Exchange, Headers
    from gateway.identity import Grant, Identity
    from gateway.registry import Upstream
    from gateway.streams.events import SessionRecord
    from gateway.streams.session import StreamSession

_DISCOVERY_PATHS = (b"/api", b"/apis", b"/version")


class Outcome(Enum):
    """How the gateway decided about a request (the audit line's `decision`)."""

    NONE = "none"  # ended before any decision (e.g. the client left)
    ALLOW = "allow"  # forwarded to the tenant (what the tenant answered is the status)
    DENY = "deny"  # refused by policy (403)
    UNAUTHENTICATED = "unauthenticated"  # no or bad credential (401)
    REFUSED = "refused"  # malformed or not allowed before any policy decision (4xx)
    UNAVAILABLE = "unavailable"  # a dependency could not answer (503)
    PAUSED = "paused"  # the tenant is paused or still waking (503)
    LIMITED = "limited"  # over a rate or concurrency limit (429)
    LOCAL = "local"  # the gateway's own endpoints and pages


class Flow:
    """One request's findings; created by the pipeline when a request head is complete."""

    __slots__ = (
        "credential",
        "exchange",
        "forwarded_for",
        "grant",
        "held",
        "identity",
        "membership",
        "outcome",
        "reason",
        "recording",
        "requested_tenant",
        "source",
        "stream",
        "target",
        "tenant",
        "upstream",
        "upstream_head",
    )

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.source: str = exchange.conn.peer  # the client's address (gateway.http.client_address)
        self.forwarded_for: bytes | None = None  # X-Forwarded-For to send upstream
        self.tenant: str | None = None  # known tenant the request addresses
        self.requested_tenant: str | None = None  # a well-formed name no tenant has (yet)
        self.upstream: Upstream | None = None
        self.target: bytes | None = None  # the path + query to send upstream
        self.identity: Identity | None = None
        self.membership: Membership | None = None  # directory groups, when configured
        self.grant: Grant | None = None
        # a tenant-native token: the `Authorization` value that goes upstream instead of the
        # gateway's credential (no impersonation)
        self.credential: bytes | None = None
        self.held: tuple | None = None  # open-stream counts the limit step took (gateway.limits)
        self.upstream_head = b""  # the request head the rewrite step built
        # exec/attach/cp/port-forward upgrades only: the stream plan (forward step) and the
        # session's recording (gateway.sessions), when a policy asks for one
        self.stream: StreamSession | None = None
        self.recording: SessionRecord | None = None
        self.outcome = Outcome.NONE
        self.reason = ""  # for the audit log, never the client

    def end(self, outcome: Outcome, reason: str = "") -> None:
        """Record how the gateway decided (before answering or forwarding)."""
        self.outcome = outcome
        self.reason = reason

    def is_discovery(self) -> bool:
        """A discovery request (kubectl makes these before anything else)."""
        exchange = self.exchange
        path = (self.target or exchange.target).partition(b"?")[0].rstrip(b"/")
        return path in _DISCOVERY_PATHS or b"apidiscovery.k8s.io" in (
            exchange.header(b"accept") or b""
        )

    def fail(
        self,
        code: int,
        message: str,
        *,
        extra: Headers = (),  # type: ignore[assignment]
        details: dict | None = None,
    ) -> None:
        """Answer with a Kubernetes `Status` (with `details` if given), except for a discovery
        request: client-go cannot decode a Status there and would print "unknown"; a text
        body it shows, so kubectl users see why."""
        if self.is_discovery():
            self.exchange.respond(
                code, message.encode(), extra=extra, content_type=b"text/plain; charset=utf-8"
            )
        else:
            self.exchange.fail(code, message, extra=extra, details=details)
