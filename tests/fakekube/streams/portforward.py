"""Port-forward over SPDY: each connection is an error + data stream pair, matched by requestid."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from .bytesource import ByteSink, ByteSource
from .podservice import UpperEcho
from .spdy_session import SpdySession, SpdyStream
from .tasks import cancel_all

CHUNK = 32 * 1024


@dataclass
class Pair:
    error: SpdyStream | None = None
    data: SpdyStream | None = None
    started: bool = False


def _port(stream: SpdyStream) -> int | None:
    try:
        port = int(stream.headers.get("port", ""))
    except ValueError:
        return None
    return port if 0 < port < 65536 else None


async def forward(pair: Pair) -> None:
    """Relay one forwarded connection to the pod's service until the client half-closes."""
    assert pair.error is not None and pair.data is not None
    port = _port(pair.data)
    if port is None:
        raw = pair.data.headers.get("port", "")
        await pair.error.write(f"invalid port {raw!r}".encode())
    else:
        service = UpperEcho(port)
        while chunk := await pair.data.data.read(CHUNK):
            await pair.data.write(service.respond(chunk))
    await pair.data.close()
    await pair.error.close()


async def run_spdy_portforward(source: ByteSource, sink: ByteSink) -> None:
    """Serve forwarded connections until the client closes the session."""
    pairs: dict[str, Pair] = {}
    workers: set[asyncio.Task[None]] = set()

    def on_stream(stream: SpdyStream) -> None:
        request_id = stream.headers.get("requestid", str(stream.id))
        pair = pairs.setdefault(request_id, Pair())
        if stream.type == "error":
            pair.error = stream
        elif stream.type == "data":
            pair.data = stream
        if pair.error and pair.data and not pair.started:
            pair.started = True
            del pairs[request_id]
            task = asyncio.create_task(forward(pair))
            workers.add(task)
            task.add_done_callback(workers.discard)

    try:
        await SpdySession(source, sink, on_stream).run()
    finally:
        await cancel_all(*workers)
