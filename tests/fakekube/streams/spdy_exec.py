"""exec/attach over SPDY/3.1 (v4.channel.k8s.io): one client-opened stream per channel."""

from __future__ import annotations

import asyncio
import contextlib

from . import status
from .bytesource import ByteSink, ByteSource
from .container import run_session
from .podfs import FilesystemRegistry
from .procio import ProcessIO, Writer
from .request import StreamRequest
from .resize import ResizeDecoder
from .spdy_session import SpdySession, SpdyStream
from .tasks import cancel_all

STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's default
CLIENT_CLOSE_GRACE = 10.0
CHUNK = 32 * 1024


def expected_streams(req: StreamRequest) -> set[str]:
    """The streams the kubelet waits for before starting the process."""
    tty = req.flag("tty")
    wanted = {"error"}
    wanted |= {"stdin"} if req.flag("stdin") else set()
    wanted |= {"stdout"} if req.flag("stdout") else set()
    wanted |= {"stderr"} if req.flag("stderr") and not tty else set()
    wanted |= {"resize"} if tty else set()
    return wanted


def _writer(stream: SpdyStream | None) -> Writer | None:
    return stream.write if stream is not None else None


async def _pump_stdin(stream: SpdyStream, io: ProcessIO) -> None:
    while chunk := await stream.data.read(CHUNK):
        await io.feed_stdin(chunk)
    io.close_stdin()


async def _pump_resize(stream: SpdyStream, io: ProcessIO) -> None:
    decoder = ResizeDecoder(io)
    while chunk := await stream.data.read(CHUNK):
        decoder.feed(chunk)


async def _discard(data: bytes) -> None:
    return None


async def run_spdy_exec(
    req: StreamRequest, source: ByteSource, sink: ByteSink, files: FilesystemRegistry
) -> None:
    """Wait for the streams, run the process, half-close outputs, send the Status, await close."""
    streams: dict[str, SpdyStream] = {}
    wanted = expected_streams(req)
    ready = asyncio.Event()

    def on_stream(stream: SpdyStream) -> None:
        streams.setdefault(stream.type, stream)
        if wanted <= streams.keys():
            ready.set()

    session = SpdySession(source, sink, on_stream)
    reader = asyncio.create_task(session.run())
    waiter = asyncio.create_task(ready.wait())
    helpers: list[asyncio.Task[None]] = []
    process: asyncio.Task[dict[str, object]] | None = None
    try:
        await asyncio.wait(
            {reader, waiter}, timeout=STREAM_CREATION_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if not ready.is_set():
            return
        io = ProcessIO(
            out=_writer(streams.get("stdout")) or _discard,
            err=_writer(streams.get("stderr")),
            tty=req.flag("tty"),
            has_stdin="stdin" in streams,
        )
        if "stdin" in streams:
            helpers.append(asyncio.create_task(_pump_stdin(streams["stdin"], io)))
        if "resize" in streams:
            helpers.append(asyncio.create_task(_pump_resize(streams["resize"], io)))
        process = asyncio.create_task(run_session(req, io, files))
        await asyncio.wait({reader, process}, return_when=asyncio.FIRST_COMPLETED)
        if not process.done():
            return  # the client went away first
        for name in ("stdout", "stderr"):
            if name in streams:
                await streams[name].close()
        await streams["error"].write(status.encode(process.result()))
        await streams["error"].close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), CLIENT_CLOSE_GRACE)
    finally:
        await cancel_all(process, waiter, reader, *helpers)
