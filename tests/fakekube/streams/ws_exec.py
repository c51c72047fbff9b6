"""exec/attach over WebSocket (v4/v5.channel.k8s.io): one channel byte, then the payload."""

from __future__ import annotations

import asyncio

from . import status
from .container import run_session
from .negotiate import V5
from .podfs import FilesystemRegistry
from .procio import ProcessIO, Writer
from .request import StreamRequest
from .resize import ResizeDecoder
from .tasks import cancel_all
from .websocket import WebSocket

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255


def _writer(ws: WebSocket, channel: int) -> Writer:
    prefix = bytes([channel])

    async def write(data: bytes) -> None:
        await ws.send(prefix + data)

    return write


async def _read_client(ws: WebSocket, io: ProcessIO, v5: bool) -> None:
    """Demultiplex the client's messages until it closes."""
    resize = ResizeDecoder(io)
    while (message := await ws.recv()) is not None:
        if not message:
            continue
        channel, payload = message[0], message[1:]
        if channel == STDIN:
            await io.feed_stdin(payload)
        elif channel == RESIZE:
            resize.feed(payload)
        elif channel == CLOSE and v5 and payload[:1] == bytes([STDIN]):
            io.close_stdin()
    io.close_stdin()


async def run_ws_exec(
    req: StreamRequest, ws: WebSocket, protocol: str, files: FilesystemRegistry
) -> None:
    """Run the session; the verdict goes on the error channel, then a normal close."""
    tty = req.flag("tty")
    io = ProcessIO(
        out=_writer(ws, STDOUT) if req.flag("stdout") else _discard,
        err=_writer(ws, STDERR) if req.flag("stderr") else _discard,
        tty=tty,
        has_stdin=req.flag("stdin"),
    )
    reader = asyncio.create_task(_read_client(ws, io, protocol == V5))
    process = asyncio.create_task(run_session(req, io, files))
    try:
        await asyncio.wait({reader, process}, return_when=asyncio.FIRST_COMPLETED)
        if process.done():
            await ws.send(bytes([ERROR]) + status.encode(process.result()))
            await ws.finish(reader)
    finally:
        await cancel_all(process, reader)


async def _discard(data: bytes) -> None:
    return None
