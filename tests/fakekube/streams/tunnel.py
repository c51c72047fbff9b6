"""SPDY tunnelled in WebSocket (kubectl >= 1.31 port-forward): bytes ride in binary messages."""

from __future__ import annotations

from .bytesource import ByteSink, ConnectionClosed, drain
from .websocket import WebSocket


class WebSocketSource:
    """A ByteSource over the concatenated binary messages (SPDY tunnelled in WebSocket)."""

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        self._buffer = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            message = await self._ws.recv()
            if message is None:
                raise ConnectionClosed("websocket closed")
            self._buffer += message
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out


class WebSocketSink:
    """A ByteSink writing each chunk as one binary message."""

    def __init__(self, ws: WebSocket, sink: ByteSink) -> None:
        self._ws = ws
        self._sink = sink

    def write(self, data: bytes) -> None:
        self._ws.send_nowait(data)

    async def drain(self) -> None:
        await drain(self._sink)

    def is_closing(self) -> bool:
        return self._ws.close_sent or self._sink.is_closing()
