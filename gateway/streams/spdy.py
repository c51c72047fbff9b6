"""SPDY/3.1 framing as Kubernetes uses it (moby/spdystream): frames fed incrementally, the
zlib-compressed header blocks, and the frames the gateway sends.

Every header block one side sends (SYN_STREAM, SYN_REPLY, HEADERS) continues that side's
single zlib stream, primed with the SPDY/3 dictionary: a reader must decompress every block
of its direction, in order, even blocks it does not care about. Decompressed blocks are
bounded (`MAX_HEADER_BYTES`), and so are frames (`max_frame`). spdystream does no flow
control, so WINDOW_UPDATE and SETTINGS are read and ignored.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_REFUSED_STREAM, RST_CANCEL = 1, 3, 5
MAX_FRAME = 1 << 20
MAX_HEADER_BYTES = 64 * 1024

_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_TAIL = (
    b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502"
    b"504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad "
    b"Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not "
    b"Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec "
    b"00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,"
    b"image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,"
    b"publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    """The SPDY/3 header dictionary (draft 3, 2.6.10.1): length-prefixed words, then a tail."""
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL


DICTIONARY = _dictionary()

Headers = dict[str, list[str]]


class ProtocolError(Exception):
    """The peer broke SPDY/3.1 (or a bound): the connection must end."""


class Control(NamedTuple):
    type: int
    flags: int
    body: bytes


class Data(NamedTuple):
    stream_id: int
    flags: int
    payload: bytes

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


class Reader:
    """Frames from one direction of a connection, as they complete."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Control | Data]:
        buf = self._buffer
        buf += data
        out: list[Control | Data] = []
        pos, end = 0, len(buf)
        while end - pos >= 8:
            first, second = struct.unpack_from(">II", buf, pos)
            length = second & 0xFFFFFF
            if length > self.max_frame:
                raise ProtocolError(f"a frame of {length} bytes (limit {self.max_frame})")
            if end - pos < 8 + length:
                break
            body = bytes(buf[pos + 8 : pos + 8 + length])
            pos += 8 + length
            if first & 0x80000000:
                version = (first >> 16) & 0x7FFF
                if version != VERSION:
                    raise ProtocolError(f"SPDY version {version}, not 3")
                out.append(Control(first & 0xFFFF, second >> 24, body))
            else:
                out.append(Data(first & 0x7FFFFFFF, second >> 24, body))
        if pos:
            del buf[:pos]
        return out


def stream_id_of(body: bytes) -> int:
    """The leading 31-bit stream id of SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS,
    WINDOW_UPDATE bodies."""
    if len(body) < 4:
        raise ProtocolError("a control frame too short for its stream id")
    return struct.unpack_from(">I", body)[0] & 0x7FFFFFFF


def header_block(frame: Control) -> bytes:
    """The compressed header block of a SYN_STREAM (after 10 bytes), SYN_REPLY or HEADERS
    (after 4)."""
    return frame.body[10:] if frame.type == SYN_STREAM else frame.body[4:]


def control(kind: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body)) + body


def data(stream_id: int, payload: bytes = b"", *, fin: bool = False) -> bytes:
    return (
        struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(payload))
        + payload
    )


def syn_stream(stream_id: int, block: bytes, *, fin: bool = False) -> bytes:
    body = struct.pack(">IIH", stream_id, 0, 0) + block
    return control(SYN_STREAM, body, FLAG_FIN if fin else 0)


def syn_reply(stream_id: int, block: bytes) -> bytes:
    return control(SYN_REPLY, struct.pack(">I", stream_id) + block)


def rst_stream(stream_id: int, status: int) -> bytes:
    return control(RST_STREAM, struct.pack(">II", stream_id, status))


def ping(ping_id: int) -> bytes:
    return control(PING, struct.pack(">I", ping_id))


def goaway(last_stream_id: int, status: int = 0) -> bytes:
    return control(GOAWAY, struct.pack(">II", last_stream_id, status))


class HeaderWriter:
    """The one zlib stream of the header blocks this side sends."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )

    def block(self, headers: dict[str, str]) -> bytes:
        raw = [struct.pack(">I", len(headers))]
        for name, value in headers.items():
            key, val = name.lower().encode(), value.encode()
            raw += (struct.pack(">I", len(key)), key, struct.pack(">I", len(val)), val)
        return self._z.compress(b"".join(raw)) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderReader:
    """The one zlib stream of the header blocks the peer sends; feed every block in order."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, zdict=DICTIONARY)

    def read(self, block: bytes) -> Headers:
        try:
            raw = self._z.decompress(block, MAX_HEADER_BYTES)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not decompress: {exc}") from None
        if self._z.unconsumed_tail:
            raise ProtocolError(f"a header block over {MAX_HEADER_BYTES} bytes")
        return _decode_block(raw)


def _decode_block(raw: bytes) -> Headers:
    try:
        (count,) = struct.unpack_from(">I", raw)
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", raw, pos)
            name = raw[pos + 4 : pos + 4 + n].decode("latin-1").lower()
            pos += 4 + n
            (n,) = struct.unpack_from(">I", raw, pos)
            value = raw[pos + 4 : pos + 4 + n].decode("latin-1")
            pos += 4 + n
            if pos > len(raw):
                raise ProtocolError("a header block shorter than its lengths")
            headers.setdefault(name, []).extend(value.split("\x00"))
    except struct.error:
        raise ProtocolError("a truncated header block") from None
    return headers
