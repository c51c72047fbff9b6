"""Bridges between a client and a tenant that speak different upgrades: WebSocket on one
side, SPDY/3.1 on the other, for exec/attach/cp (`remotecommand`) and port-forward
(`portforward`). Each is a `Relay`: fed bytes from both sides on the event loop, it writes
the translation at once and holds nothing beyond an incomplete frame (and, until a SPDY
client opened its streams, a bounded amount of early output)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.streams import websocket


class WebSocketEnd:
    """One WebSocket the gateway terminates. As the client's server it reads masked frames
    and sends plain ones; as a tenant's client (`client_role`) the other way round. Pings
    are answered, a close is answered once; data messages are returned to the caller."""

    def __init__(self, send: Callable[[bytes], None], *, client_role: bool) -> None:
        self._send = send
        self._masked = client_role
        self.reader = websocket.Reader(masked=not client_role)
        self.close_sent = False
        self.close_received = False

    def feed(self, data: bytes) -> list[bytes]:
        """The data messages in `data`; raises `websocket.ProtocolError`."""
        out: list[bytes] = []
        for opcode, payload in self.reader.feed(data):
            if opcode in (websocket.OP_BINARY, websocket.OP_TEXT):
                if not self.close_received:
                    out.append(payload)
            elif opcode == websocket.OP_PING:
                if not self.close_sent:
                    self._send(websocket.encode(websocket.OP_PONG, payload, masked=self._masked))
            elif opcode == websocket.OP_CLOSE:
                self.close_received = True
                self.close()
        return out

    def send(self, payload: bytes) -> None:
        """One binary message (dropped once this side sent its close)."""
        if not self.close_sent:
            self._send(websocket.encode(websocket.OP_BINARY, payload, masked=self._masked))

    def close(self, code: int = websocket.CLOSE_NORMAL, reason: str = "") -> None:
        if not self.close_sent:
            self.close_sent = True
            self._send(
                websocket.encode(
                    websocket.OP_CLOSE, websocket.close_payload(code, reason), masked=self._masked
                )
            )
