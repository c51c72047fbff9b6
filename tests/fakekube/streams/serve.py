"""Entry point: answer the upgrade, run the session on the chosen transport, close."""

from __future__ import annotations

import asyncio

from .bytesource import StreamSource, close_writer
from .http1 import write_bare_refusal, write_refusal, write_switch
from .negotiate import ALL_TRANSPORTS, Refusal, negotiate
from .podfs import DEFAULT_FILESYSTEMS, FilesystemRegistry
from .portforward import run_spdy_portforward
from .request import StreamRequest
from .spdy_exec import run_spdy_exec
from .tunnel import WebSocketSink, WebSocketSource
from .websocket import WebSocket
from .ws_exec import run_ws_exec


async def serve_stream(
    req: StreamRequest,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    leftover: bytes,
    *,
    files: FilesystemRegistry = DEFAULT_FILESYSTEMS,
    transports: frozenset[str] = ALL_TRANSPORTS,
) -> int:
    """Do the upgrade handshake chosen by the headers, run the session, close the writer;
    return the HTTP status sent (101, or 400/403 when the upgrade is not one we speak)."""
    try:
        choice = negotiate(req, transports)
        if isinstance(choice, Refusal):
            if choice.bare:
                await write_bare_refusal(writer, choice.code)
            else:
                await write_refusal(writer, choice.code, choice.reason, choice.message)
            return choice.code
        await write_switch(writer, choice.headers)
        source = StreamSource(reader, leftover)
        if choice.transport == "spdy":
            if req.kind == "portforward":
                await run_spdy_portforward(source, writer)
            else:
                await run_spdy_exec(req, source, writer, files)
            return 101
        ws = WebSocket(source, writer)
        if req.kind == "portforward":
            await run_spdy_portforward(WebSocketSource(ws), WebSocketSink(ws, writer))
            await ws.finish()
        else:
            await run_ws_exec(req, ws, choice.protocol, files)
        return 101
    finally:
        await close_writer(writer)
