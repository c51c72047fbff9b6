"""SPDY/3.1 framing: frame encode/decode and the zlib header-block codec."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .bytesource import ByteSource
from .spdy_dictionary import DICTIONARY

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_INVALID_STREAM, RST_CANCEL = 1, 2, 5
MAX_DATA = 0xFFFFFF

Headers = dict[str, list[str]]


@dataclass(frozen=True)
class ControlFrame:
    type: int
    flags: int
    body: bytes


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    flags: int
    data: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


async def read_frame(source: ByteSource) -> ControlFrame | DataFrame:
    """Read one frame; the 24-bit length says how much body follows."""
    first, second = struct.unpack(">II", await source.readexactly(8))
    flags, length = second >> 24, second & 0xFFFFFF
    body = await source.readexactly(length) if length else b""
    if first & 0x80000000:
        return ControlFrame(first & 0xFFFF, flags, body)
    return DataFrame(first & 0x7FFFFFFF, flags, body)


def control(frame_type: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, frame_type, (flags << 24) | len(body)) + body


def data(stream_id: int, payload: bytes, fin: bool = False) -> bytes:
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


def syn_reply(stream_id: int, block: bytes, fin: bool = False) -> bytes:
    return control(SYN_REPLY, struct.pack(">I", stream_id) + block, FLAG_FIN if fin else 0)


def rst_stream(stream_id: int, status: int) -> bytes:
    return control(RST_STREAM, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    return control(PING, struct.pack(">I", ping_id))


def goaway(last_stream_id: int, status: int = 0) -> bytes:
    return control(GOAWAY, struct.pack(">II", last_stream_id, status))


def settings(values: dict[int, int]) -> bytes:
    body = struct.pack(">I", len(values)) + b"".join(
        struct.pack(">II", key & 0xFFFFFF, value) for key, value in values.items()
    )
    return control(SETTINGS, body)


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    associated_id: int
    priority: int
    block: bytes


def parse_syn_stream(body: bytes) -> SynStream:
    stream_id, assoc, pri = struct.unpack(">IIB", body[:9])
    return SynStream(stream_id & 0x7FFFFFFF, assoc & 0x7FFFFFFF, pri >> 5, body[10:])


def parse_stream_id(body: bytes) -> int:
    """The leading 31-bit stream id of SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE."""
    return struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF


def encode_block(headers: Headers) -> bytes:
    """Uncompressed name/value block: 32-bit counts and lengths, values joined by NUL."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        key, value = name.lower().encode(), "\x00".join(values).encode()
        out += [struct.pack(">I", len(key)), key, struct.pack(">I", len(value)), value]
    return b"".join(out)


def decode_block(raw: bytes) -> Headers:
    (count,), pos = struct.unpack(">I", raw[:4]), 4
    headers: Headers = {}
    for _ in range(count):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        name = raw[pos + 4 : pos + 4 + n].decode().lower()
        pos += 4 + n
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        value = raw[pos + 4 : pos + 4 + n].decode()
        pos += 4 + n
        headers.setdefault(name, []).extend(value.split("\x00"))
    return headers


class HeaderCompressor:
    """One zlib stream (with the SPDY dictionary) for every header block we send."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        return self._z.compress(encode_block(headers)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """One zlib stream for every header block the peer sends; blocks must be fed in order."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, zdict=DICTIONARY)

    def decompress(self, block: bytes) -> Headers:
        return decode_block(self._z.decompress(block))
