"""Port-forward across the two upgrades. Over WebSocket (`SPDY/3.1+portforward.k8s.io`) the
client tunnels a whole SPDY session in binary messages; over SPDY (`portforward.k8s.io`)
the same session runs on the connection itself. So the bridge only wraps and unwraps
bytes: the data and error streams of every forwarded port pass untouched, in both
directions, and a close on one side ends the other."""

from __future__ import annotations

from gateway.streams import websocket
from gateway.streams.bridge import WebSocketEnd
from gateway.streams.relay import Ends


class WebSocketClientSpdyTenant:
    """A WebSocket client (tunnelled SPDY) ↔ a tenant speaking SPDY/3.1."""

    def __init__(self, ends: Ends) -> None:
        self.ends = ends
        self.client = WebSocketEnd(ends.to_client, client_role=False)

    def start(self) -> None:
        return None

    def from_client(self, data: bytes) -> None:
        try:
            messages = self.client.feed(data)
        except websocket.ProtocolError as exc:
            self.client.close(websocket.CLOSE_PROTOCOL_ERROR, "protocol error")
            self.ends.end(f"client WebSocket: {exc}")
            return
        for payload in messages:
            self.ends.to_tenant(payload)
        if self.client.close_received:
            self.ends.end("")

    def from_tenant(self, data: bytes) -> None:
        self.client.send(data)

    def tenant_closed(self) -> bool:
        self.client.close()
        return False


class SpdyClientWebSocketTenant:
    """A SPDY/3.1 client ↔ a tenant that takes port-forward only over WebSocket."""

    def __init__(self, ends: Ends) -> None:
        self.ends = ends
        self.tenant = WebSocketEnd(ends.to_tenant, client_role=True)

    def start(self) -> None:
        return None

    def from_client(self, data: bytes) -> None:
        self.tenant.send(data)

    def from_tenant(self, data: bytes) -> None:
        try:
            messages = self.tenant.feed(data)
        except websocket.ProtocolError as exc:
            self.ends.end(f"tenant WebSocket: {exc}")
            return
        for payload in messages:
            self.ends.to_client(payload)
        if self.tenant.close_received:
            self.ends.end("")

    def tenant_closed(self) -> bool:
        return False
