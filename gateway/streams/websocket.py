"""RFC 6455 framing, both roles, fed incrementally: the gateway terminates a client's
WebSocket (as server: frames in are masked, frames out are not), speaks WebSocket to a
tenant (as client: the other way round), or watches one pass by.

`Reader.feed` takes bytes as they arrive and returns whole messages: data messages
(continuations joined) and control frames, in order. A frame or message larger than
`max_message` bytes, a control frame longer than 125 bytes or fragmented, or a frame masked
the wrong way is a `ProtocolError`; nothing is held beyond one incomplete message.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import NamedTuple

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR = 1000, 1001, 1002
CLOSE_INTERNAL_ERROR = 1011
MAX_MESSAGE = 4 << 20
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolError(Exception):
    """The peer broke RFC 6455 (or a bound): the connection must end."""


class Message(NamedTuple):
    """A data message (`OP_TEXT`/`OP_BINARY`, continuations joined) or a control frame."""

    opcode: int
    payload: bytes


def accept_key(key: bytes) -> bytes:
    """`Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`."""
    return base64.b64encode(hashlib.sha1(key.strip() + _GUID).digest())


def new_key() -> bytes:
    """A fresh `Sec-WebSocket-Key` (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16))


def xor(payload: bytes, mask: bytes) -> bytes:
    """Mask or unmask `payload` with the 4-byte `mask` (one big-integer XOR, C speed)."""
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode(opcode: int, payload: bytes = b"", *, masked: bool, fin: bool = True) -> bytes:
    """One frame; `masked` for frames a client sends (a fresh random mask each)."""
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack(">BB", first, bit | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", first, bit | 126, n)
    else:
        head = struct.pack(">BBQ", first, bit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + xor(payload, mask)


def close_payload(code: int, reason: str = "") -> bytes:
    """The body of a close frame: the code, then a UTF-8 reason (cut to fit 125 bytes)."""
    return struct.pack(">H", code) + reason.encode()[:123]


def close_code(payload: bytes) -> int | None:
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


class Reader:
    """Frames from one direction of a connection. `masked`: True for what a client sends,
    False for what a server sends, None to accept either (an observer that trusts neither
    side to be strict is still bounded)."""

    def __init__(self, *, masked: bool | None, max_message: int = MAX_MESSAGE) -> None:
        self.masked = masked
        self.max_message = max_message
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._parts_bytes = 0
        self._opcode = 0  # the data message being assembled, 0: none

    def feed(self, data: bytes) -> list[Message]:
        """Every message completed by `data`, in order."""
        buf = self._buffer
        buf += data
        out: list[Message] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            size = b1 & 0x7F
            head = 2
            if size == 126:
                if end - pos < 4:
                    break
                size = struct.unpack_from(">H", buf, pos + 2)[0]
                head = 4
            elif size == 127:
                if end - pos < 10:
                    break
                size = struct.unpack_from(">Q", buf, pos + 2)[0]
                head = 10
            is_masked = bool(b1 & 0x80)
            if self.masked is not None and is_masked != self.masked:
                raise ProtocolError("a frame masked the wrong way for its direction")
            if size > self.max_message:
                raise ProtocolError(f"a frame of {size} bytes (limit {self.max_message})")
            if is_masked:
                head += 4
            if end - pos < head + size:
                break
            payload = bytes(buf[pos + head : pos + head + size])
            if is_masked:
                payload = xor(payload, bytes(buf[pos + head - 4 : pos + head]))
            pos += head + size
            message = self._frame(bool(b0 & 0x80), b0 & 0x0F, payload)
            if message is not None:
                out.append(message)
        if pos:
            del buf[:pos]
        return out

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Message | None:
        if opcode >= 0x8:
            if not fin or len(payload) > 125:
                raise ProtocolError("a fragmented or oversized control frame")
            return Message(opcode, payload)
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                raise ProtocolError("a continuation frame with no message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode:
                raise ProtocolError("a new message before the last one ended")
            if fin:
                return Message(opcode, payload)
            self._opcode = opcode
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}")
        self._parts.append(payload)
        self._parts_bytes += len(payload)
        if self._parts_bytes > self.max_message:
            raise ProtocolError(f"a message over {self.max_message} bytes")
        if not fin:
            return None
        message = Message(self._opcode, b"".join(self._parts))
        self._parts, self._parts_bytes, self._opcode = [], 0, 0
        return message
