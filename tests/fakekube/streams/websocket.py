"""RFC 6455, server side, after the handshake: masked frames in, unmasked frames out."""

from __future__ import annotations

import asyncio
import contextlib

from .bytesource import ByteSink, ByteSource, ConnectionClosed, drain, send

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
MAX_MESSAGE = 64 * 1024 * 1024


def encode_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """One unmasked frame (servers never mask)."""
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | opcode])
    if n < 126:
        head.append(n)
    elif n < 1 << 16:
        head.append(126)
        head += n.to_bytes(2, "big")
    else:
        head.append(127)
        head += n.to_bytes(8, "big")
    return bytes(head) + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR the payload with the repeating 4-byte mask."""
    if not payload:
        return payload
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class WebSocket:
    """Message-level WebSocket: `recv()` answers pings and closes; `send()` writes binary."""

    def __init__(self, source: ByteSource, sink: ByteSink) -> None:
        self._source = source
        self._sink = sink
        self.close_sent = False
        self.close_received = False
        self.close_code: int | None = None

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = await self._source.readexactly(2)
        size = b1 & 0x7F
        if size == 126:
            size = int.from_bytes(await self._source.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self._source.readexactly(8), "big")
        if size > MAX_MESSAGE:
            raise ConnectionClosed(f"frame of {size} bytes is too large")
        mask = await self._source.readexactly(4) if b1 & 0x80 else b""
        payload = await self._source.readexactly(size) if size else b""
        return bool(b0 & 0x80), b0 & 0x0F, unmask(payload, mask) if mask else payload

    async def recv(self) -> bytes | None:
        """The next data message (text or binary), or None once the peer closed or vanished."""
        parts: list[bytes] = []
        while True:
            try:
                fin, opcode, payload = await self._read_frame()
            except ConnectionClosed:
                return None
            if opcode == OP_PING:
                self._write(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_received = True
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                if not self.close_sent:
                    self.close_sent = True
                    self._write(OP_CLOSE, payload[:2])
                    await drain(self._sink)
                return None
            elif opcode in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
                parts.append(payload)
                if fin:
                    return b"".join(parts)

    def _write(self, opcode: int, payload: bytes) -> bool:
        return send(self._sink, encode_frame(opcode, payload))

    async def send(self, data: bytes) -> None:
        """One binary message; dropped silently once we have sent our close."""
        if not self.close_sent:
            self._write(OP_BINARY, data)
            await drain(self._sink)

    def send_nowait(self, data: bytes) -> None:
        """Queue one binary message without waiting for the buffer to drain."""
        if not self.close_sent:
            self._write(OP_BINARY, data)

    async def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start (or finish) the closing handshake from our side."""
        if not self.close_sent:
            self.close_sent = True
            self._write(OP_CLOSE, code.to_bytes(2, "big") + reason.encode())
            await drain(self._sink)

    async def finish(self, reader: asyncio.Task[object] | None = None, grace: float = 2.0) -> None:
        """Send close and wait (bounded) for the peer's close, via `reader` or by reading here."""
        await self.send_close()
        if self.close_received:
            return
        with contextlib.suppress(TimeoutError):
            if reader is not None:
                await asyncio.wait_for(asyncio.shield(reader), grace)
            else:
                await asyncio.wait_for(self._discard_until_closed(), grace)

    async def _discard_until_closed(self) -> None:
        while await self.recv() is not None:
            pass
