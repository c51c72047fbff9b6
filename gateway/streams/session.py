"""One exec/attach/cp/port-forward upgrade as the forward step drives it: which upgrade
goes to the tenant (the client's, or the other one when the tenant is known to refuse the
client's), whether a refusal is retried with the other upgrade, the 101 the client gets,
and what relays the bytes afterwards: nothing (a raw tunnel), an observer feeding a
recording, or a bridge.

A refusal (a 4xx other than 401, 407, 429, and other than an API server's 403 `Status`) is
retried once with the other upgrade when the gateway can translate between them; nothing
runs in a container before a 101, so a retry repeats no work. A retry that gets a 101
teaches `TenantProtocols` about the tenant.
"""

from __future__ import annotations

from gateway.streams import channels
from gateway.streams.bridge import portforward, remotecommand
from gateway.streams.capabilities import TenantProtocols
from gateway.streams.events import ChannelTap, SessionRecord
from gateway.streams.observe import SpdyObserver, WebSocketObserver
from gateway.streams.relay import Ends, Observed, Relay
from gateway.streams.upgrade import WEBSOCKET, StreamRequest, accepted_protocol, other
from gateway.streams.websocket import new_key

_NOT_RETRIED = frozenset({401, 407, 429})


def _is_status(headers: list[tuple[bytes, bytes]]) -> bool:
    """The answer is the API server's: a JSON body (a Kubernetes `Status`)."""
    return any(
        name.lower() == b"content-type" and b"json" in value.lower() for name, value in headers
    )


class UnusableSwitch(Exception):
    """The tenant answered 101 with something the gateway cannot speak."""


class StreamSession:
    """The plan and state of one stream upgrade (see the module docstring)."""

    def __init__(
        self,
        request: StreamRequest,
        tenant: str,
        *,
        protocols: TenantProtocols | None = None,
        recording: SessionRecord | None = None,
    ) -> None:
        self.request = request
        self.tenant = tenant
        self.protocols = protocols
        self.recording = recording
        # bridging needs a sub-protocol of the client's the gateway can translate
        self.can_bridge = protocols is not None and request.client_protocol() is not None
        first = request.client
        if self.can_bridge and protocols is not None:
            first = protocols.first(tenant, request.family, request.client)
        self.attempt = first
        self.attempts = 0
        self.tenant_protocol = ""  # the sub-protocol the tenant chose
        self._key = new_key() if self.can_bridge else b""
        self._native = b""

    @property
    def bridged(self) -> bool:
        return self.attempt != self.request.client

    def head(self, native: bytes) -> bytes:
        """The upgrade request for the current attempt (`native`: the rewrite step's)."""
        self._native = native
        self.attempts += 1
        if not self.bridged:
            return native
        return self.request.tenant_head(native, self.attempt, self._key)

    def retry_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The tenant refused the current attempt with `status` and `headers`: the head of
        the next attempt, or None to relay the refusal. An API server's own 403 (a JSON
        `Status`: authorization said no) is never retried — the other upgrade is checked
        with another verb; what is retried is a refusal of the upgrade itself (a kubelet's
        bare 403 from its WebSocket handshake, a 400, an ingress's answer)."""
        if (
            not self.can_bridge
            or self.attempts >= 2
            or status in _NOT_RETRIED
            or not 400 <= status < 500
            or (status == 403 and _is_status(headers))
        ):
            return None
        self.attempt = other(self.attempt)
        return self.head(self._native)

    def switched(self, headers: list[tuple[bytes, bytes]], request_id: bytes) -> bytes | None:
        """The tenant answered 101 with `headers`: the 101 head the client gets (None: the
        tenant's own, relayed). Raises `UnusableSwitch`."""
        request = self.request
        if self.bridged:
            try:
                self.tenant_protocol = accepted_protocol(
                    self.attempt, headers, request.tenant_protocols(self.attempt), self._key
                )
            except ValueError as exc:
                raise UnusableSwitch(str(exc)) from None
        else:
            wanted = (
                b"sec-websocket-protocol"
                if request.client == WEBSOCKET
                else b"x-stream-protocol-version"
            )
            self.tenant_protocol = next(
                (v.decode("latin-1").strip() for n, v in headers if n.lower() == wanted), ""
            )
        if self.can_bridge and self.protocols is not None:
            self.protocols.learnt(
                self.tenant, request.family, self.attempt, after_refusal=self.attempts > 1
            )
        return request.client_switch(request_id) if self.bridged else None

    def relay(self, ends: Ends) -> Relay | None:
        """What carries the bytes now that both sides switched; None: a raw tunnel."""
        request = self.request
        tap = None
        if self.recording is not None and request.family == "remotecommand":
            self.recording.started(self.attempt, self.tenant_protocol)
            tap = ChannelTap(self.recording)
        if not self.bridged:
            if tap is None:
                return None
            observer = (
                WebSocketObserver(tap, self.tenant_protocol)
                if request.client == WEBSOCKET
                else SpdyObserver(tap)
            )
            return Observed(ends, observer)
        if request.kind == "portforward":
            if request.client == WEBSOCKET:
                return portforward.WebSocketClientSpdyTenant(ends)
            return portforward.SpdyClientWebSocketTenant(ends)
        if request.client == WEBSOCKET:
            protocol = request.client_protocol() or channels.V4
            return remotecommand.WebSocketClientSpdyTenant(ends, request, protocol, tap)
        return remotecommand.SpdyClientWebSocketTenant(ends, request, self.tenant_protocol, tap)
