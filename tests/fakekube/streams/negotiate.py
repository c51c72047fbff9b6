"""Pick the upgrade (WebSocket or SPDY/3.1) and sub-protocol a request asks for, or refuse it."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from .request import StreamRequest

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
PORTFORWARD = "portforward.k8s.io"
TUNNEL_PREFIX = "SPDY/3.1+"

# Server-side protocol lists, in the order a real cluster offers them.
WEBSOCKET_PROTOCOLS = {
    "exec": [V5, V4],
    "attach": [V5, V4],
    "portforward": [TUNNEL_PREFIX + PORTFORWARD],
}
# kubectl offers v5..v1 over SPDY; the kubelet behind the API server speaks up to v4.
SPDY_PROTOCOLS = {"exec": [V4], "attach": [V4], "portforward": [PORTFORWARD]}

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ALL_TRANSPORTS = frozenset({"websocket", "spdy"})


@dataclass(frozen=True)
class Upgrade:
    transport: str  # "websocket" | "spdy"
    protocol: str
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str
    message: str
    bare: bool = False  # no Status body: how a kubelet's WebSocket handshake refuses


def accept_key(key: str) -> str:
    """RFC 6455 Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()


def _pick(offered: list[str], supported: list[str]) -> str | None:
    """First protocol in the client's order that the server supports."""
    return next((p for p in offered if p in supported), None)


def negotiate(req: StreamRequest, transports: frozenset[str] = ALL_TRANSPORTS) -> Upgrade | Refusal:
    """Decide how to answer the upgrade request; `transports`: the upgrades this kubelet
    speaks. A kubelet without WebSocket streams (Kubernetes before 1.30 for v5 and
    port-forward tunnelling) refuses in its WebSocket handshake: 403, no body."""
    if req.kind not in SPDY_PROTOCOLS:
        return Refusal(400, "BadRequest", f"unknown streaming subresource {req.kind!r}")
    if req.kind == "exec" and not req.params("command"):
        return Refusal(400, "BadRequest", "you must specify at least one command for the container")
    connection = [v.lower() for v in req.header_values("connection")]
    upgrade = [v.lower() for v in req.header_values("upgrade")]
    if "upgrade" not in connection or not upgrade:
        return Refusal(400, "BadRequest", "Upgrade request required")
    if "websocket" in upgrade:
        if "websocket" not in transports:
            return Refusal(403, "Forbidden", "", bare=True)
        return _websocket(req)
    if "spdy/3.1" in upgrade:
        if "spdy" not in transports:
            return Refusal(400, "BadRequest", "unable to upgrade: SPDY is not supported")
        return _spdy(req)
    return Refusal(400, "BadRequest", f"unable to upgrade: unsupported protocol {upgrade}")


def _websocket(req: StreamRequest) -> Upgrade | Refusal:
    key = req.header("sec-websocket-key")
    if not key or req.header("sec-websocket-version") != "13":
        return Refusal(400, "BadRequest", "unable to upgrade: bad WebSocket handshake")
    offered = req.header_values("sec-websocket-protocol")
    supported = WEBSOCKET_PROTOCOLS[req.kind]
    chosen = _pick(offered, supported)
    if chosen is None:
        return Refusal(
            400,
            "BadRequest",
            f"unable to upgrade: client supports {offered}, server supports {supported}",
        )
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
        ("Sec-WebSocket-Protocol", chosen),
    ]
    return Upgrade("websocket", chosen, headers)


def _spdy(req: StreamRequest) -> Upgrade | Refusal:
    offered = req.header_values("x-stream-protocol-version")
    supported = SPDY_PROTOCOLS[req.kind]
    chosen = _pick(offered, supported)
    if chosen is None:
        return Refusal(
            400,
            "BadRequest",
            f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
            f"server supports {supported}",
        )
    headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", chosen),
    ]
    return Upgrade("spdy", chosen, headers)
