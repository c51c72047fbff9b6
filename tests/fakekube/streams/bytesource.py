"""Byte pipes under the protocols: a reader with leftover bytes, and the sink interface."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Protocol


class ConnectionClosed(Exception):
    """The peer went away (EOF, reset, TLS failure) before the bytes we wanted arrived."""


class ByteSource(Protocol):
    async def readexactly(self, n: int) -> bytes:
        """Exactly `n` bytes, or raise ConnectionClosed."""
        ...


class ByteSink(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def is_closing(self) -> bool: ...


_GONE = (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError)


class StreamSource:
    """Reads from an asyncio.StreamReader after first handing out `leftover`."""

    def __init__(self, reader: asyncio.StreamReader, leftover: bytes = b"") -> None:
        self._reader = reader
        self._pending = bytearray(leftover)

    async def readexactly(self, n: int) -> bytes:
        head = b""
        if self._pending:
            head = bytes(self._pending[:n])
            del self._pending[:n]
            if len(head) == n:
                return head
        try:
            return head + await self._reader.readexactly(n - len(head))
        except _GONE as exc:
            raise ConnectionClosed(str(exc)) from exc


def send(sink: ByteSink, data: bytes) -> bool:
    """Queue `data` unless the sink is closing; False when it could not be sent."""
    if sink.is_closing():
        return False
    try:
        sink.write(data)
    except (*_GONE, RuntimeError):
        return False
    return True


async def drain(sink: ByteSink) -> None:
    """Wait for the sink's buffer to empty; a dead peer is not an error here."""
    with contextlib.suppress(*_GONE, RuntimeError):
        await sink.drain()


async def close_writer(writer: asyncio.StreamWriter, grace: float = 2.0) -> None:
    """Close the transport and wait (bounded) until it is closed."""
    with contextlib.suppress(*_GONE, RuntimeError):
        writer.close()
    with contextlib.suppress(*_GONE, RuntimeError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), grace)
