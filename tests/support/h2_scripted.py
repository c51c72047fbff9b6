"""A fault-injection tenant API server that speaks HTTP/2 (the `h2` library, server side) on
connections whose TLS handshake chose ``h2``, and HTTP/1.1 on those that chose ``http/1.1``
(the gateway retries some failures over HTTP/1.1, and a tenant may not offer ``h2`` at all).
It runs its own event loop in a thread, like `ScriptedUpstream`.

It records every connection (`connections`, with the ALPN protocol it chose), every request
(`requests`: its header fields as they left the gateway), every RST_STREAM and GOAWAY the
gateway sent, and answers as each test scripts it: `handler(stream)` is a coroutine given an
`H2Stream` (helpers to answer, send data within the flow-control window, reset, say GOAWAY,
write raw bytes, flood); `http1_handler(head, reader, writer)` answers over HTTP/1.1 as
`ScriptedUpstream` handlers do. Handlers run on the stand-in's loop; the test thread reads the
records (or runs a function on the loop with `call`) and waits with `wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame

Handler = Callable[["H2Stream"], Awaitable[None]]
Http1Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class StreamGone(Exception):
    """The stream was reset (by either side) or its connection closed."""


def event(seq: int) -> bytes:
    """One watch event, a line of JSON as kube-apiserver sends them."""
    return (
        json.dumps(
            {"type": "ADDED", "object": {"kind": "Pod", "metadata": {"name": f"pod-{seq}"}}}
        ).encode()
        + b"\n"
    )


@dataclass
class Request:
    """One request as it reached the stand-in: header fields with names lowercased (over
    HTTP/1.1 the head's fields, `:method` and `:path` added from the request line)."""

    conn: int  # the index of its connection in `connections`
    stream_id: int  # 0 over HTTP/1.1
    protocol: str  # "h2" or "http/1.1"
    headers: list[tuple[bytes, bytes]]

    def get(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    def names(self) -> set[bytes]:
        return {n for n, _ in self.headers}

    @property
    def path(self) -> bytes:
        return self.get(b":path") or b""


@dataclass
class Connection:
    """One accepted connection."""

    index: int
    alpn: str | None
    writer: asyncio.StreamWriter
    h2: H2Connection | None = None
    streams: dict[int, H2Stream] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # window or stream state
    closed: bool = False
    # a dead peer (its node gone, a half-open connection): what arrives is dropped unread,
    # so nothing is answered, PINGs included
    silent: bool = False

    def flush(self) -> None:
        if self.h2 is not None and not self.closed:
            data = self.h2.data_to_send()
            if data:
                self.writer.write(data)

    def goaway(self, last_stream_id: int, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY: streams above `last_stream_id` were never processed. Written as a raw
        frame, so that this side's `h2` state stays open and the streams at or below
        `last_stream_id` can go on (as a Go server's do while it shuts down gracefully)."""
        self.flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        self.writer.write(frame.serialize())

    def write_raw(self, data: bytes) -> None:
        """Bytes as they are, HTTP/2 or not."""
        self.writer.write(data)

    async def flood_pings(self, count: int) -> None:
        """`count` PING frames, nothing else (no stream moves on)."""
        assert self.h2 is not None
        for i in range(count):
            self.h2.ping(i.to_bytes(8, "big"))
            if i % 256 == 255:
                self.flush()
                await self.writer.drain()
        self.flush()
        await self.writer.drain()

    def abort(self) -> None:
        """Cut the connection (TCP reset-like: no GOAWAY)."""
        self.closed = True
        transport = self.writer.transport
        transport.abort()


class H2Stream:
    """One request on an HTTP/2 connection, answered by a handler."""

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.stream_id = request.stream_id
        self.sent = 0  # DATA bytes sent so far
        self.reset_code: int | None = None  # the gateway's RST_STREAM, if any
        self.gone = False

    @property
    def h2(self) -> H2Connection:
        assert self.conn.h2 is not None
        return self.conn.h2

    @property
    def path(self) -> bytes:
        return self.request.path

    @property
    def window(self) -> int:
        """What this stream may send now (the stream's and the connection's window)."""
        return self.h2.local_flow_control_window(self.stream_id)

    def respond(
        self,
        status: int = 200,
        headers: Iterable[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
        *,
        end: bool = False,
    ) -> None:
        self._check()
        fields = [(b":status", str(status).encode()), *headers]
        self.h2.send_headers(self.stream_id, fields, end_stream=end)
        self.conn.flush()

    async def send(self, data: bytes, *, end: bool = False) -> None:
        """Send `data` as the flow-control windows let it go (waiting for them)."""
        view = memoryview(data)
        while True:
            self._check()
            size = min(self.window, self.h2.max_outbound_frame_size, len(view))
            if size > 0 or not view:
                last = size == len(view)
                self.h2.send_data(self.stream_id, bytes(view[:size]), end_stream=end and last)
                self.sent += size
                self.conn.flush()
                view = view[size:]
                if not view:
                    await self.conn.writer.drain()
                    return
                continue
            self.conn.changed.clear()
            await self.conn.changed.wait()

    def end(self) -> None:
        self._check()
        self.h2.end_stream(self.stream_id)
        self.conn.flush()

    def reset(self, code: ErrorCodes = ErrorCodes.CANCEL) -> None:
        self.gone = True
        with contextlib.suppress(StreamClosedError):
            self.h2.reset_stream(self.stream_id, code)
        self.conn.flush()

    async def watch(self, interval: float = 0.05, first: int = 0) -> None:
        """Answer 200 and send an event every `interval` until the stream goes."""
        self.respond()
        seq = first
        while True:
            await self.send(event(seq))
            seq += 1
            await asyncio.sleep(interval)

    async def until_gone(self) -> None:
        while not self.gone and not self.conn.closed:
            self.conn.changed.clear()
            await self.conn.changed.wait()

    def _check(self) -> None:
        if self.gone or self.conn.closed:
            raise StreamGone(self.stream_id)


async def default_handler(stream: H2Stream) -> None:
    """A watch: events every 50 ms; anything else: an empty list."""
    if b"watch=" in stream.path or b"follow=" in stream.path:
        await stream.watch()
        return
    stream.respond()
    await stream.send(b'{"kind":"List","items":[]}', end=True)


async def default_http1(head: bytes, reader: asyncio.StreamReader, writer) -> bool:
    """HTTP/1.1: a watch as a chunked stream of events every 50 ms; else an empty list."""
    target = head.split(b" ", 2)[1]
    if b"watch=" in target or b"follow=" in target:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        seq = 0
        while not writer.is_closing():
            chunk = event(seq)
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            await writer.drain()
            seq += 1
            await asyncio.sleep(0.05)
        return False
    body = b'{"kind":"List","items":[]}'
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    await writer.drain()
    return True


class H2ScriptedUpstream:
    """Accepts TLS connections on 127.0.0.1, offering `protocols` (ALPN) and advertising
    `max_streams` (SETTINGS_MAX_CONCURRENT_STREAMS) on HTTP/2 connections."""

    def __init__(
        self,
        cert_file,
        key_file,
        *,
        protocols: tuple[str, ...] = ("h2", "http/1.1"),
        max_streams: int = 100,
    ) -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(cert_file), str(key_file))
        tls.set_alpn_protocols(list(protocols))
        self.max_streams = max_streams
        self.handler: Handler = default_handler
        self.http1_handler: Http1Handler = default_http1
        self.connections: list[Connection] = []
        self.requests: list[Request] = []
        self.streams: list[H2Stream] = []
        self.resets: list[tuple[int, int, int]] = []  # (connection, stream id, error code)
        self.goaways: list[tuple[int, int]] = []  # (connection, error code) from the gateway
        self.errors: list[BaseException] = []  # what handlers raised unexpectedly
        self._tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls), self.loop
        ).result()
        self.port = self.server.sockets[0].getsockname()[1]

    # -- for the test thread --------------------------------------------------------------

    def reset(self) -> None:
        """Back to the default answers, records emptied (between tests)."""
        self.handler = default_handler
        self.http1_handler = default_http1
        self.connections.clear()
        self.requests.clear()
        self.streams.clear()
        self.resets.clear()
        self.goaways.clear()
        self.errors.clear()

    def call(self, fn: Callable, *args):
        """Run `fn(*args)` on the stand-in's loop and return its result."""

        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def wait(self, predicate: Callable[[], object], timeout: float = 3.0, what: str = "") -> None:
        """Poll `predicate` (on the stand-in's loop) until it holds, or fail."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            time.sleep(0.01)

    def h2_requests(self) -> list[Request]:
        return [r for r in self.requests if r.protocol == "h2"]

    def http1_requests(self) -> list[Request]:
        return [r for r in self.requests if r.protocol == "http/1.1"]

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            for conn in self.connections:
                conn.writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # -- serving --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        conn = Connection(len(self.connections), alpn, writer)
        self.connections.append(conn)
        try:
            if alpn == "h2":
                await self._serve_h2(conn, reader)
            else:
                await self._serve_http1(conn, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            conn.closed = True
            conn.changed.set()
            writer.close()

    async def _serve_http1(
        self, conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers = [(b":method", method), (b":path", target)]
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(b":")
                    headers.append((name.strip().lower(), value.strip()))
            self.requests.append(Request(conn.index, 0, "http/1.1", headers))
            if not await self.http1_handler(head, reader, writer):
                return

    async def _serve_h2(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.h2 = h2
        h2.initiate_connection()
        h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        conn.flush()
        while not conn.closed:
            data = await reader.read(65536)
            if not data:
                return
            if conn.silent:
                continue
            try:
                events = h2.receive_data(data)
            except ProtocolError as exc:
                self.errors.append(exc)
                conn.flush()
                return
            for ev in events:
                self._on_event(conn, ev)
            conn.changed.set()
            conn.flush()

    def _on_event(self, conn: Connection, ev: object) -> None:
        assert conn.h2 is not None
        if isinstance(ev, RequestReceived):
            assert ev.headers is not None
            headers = [(bytes(n), bytes(v)) for n, v in ev.headers]
            request = Request(conn.index, ev.stream_id, "h2", headers)
            self.requests.append(request)
            stream = H2Stream(conn, request)
            conn.streams[ev.stream_id] = stream
            self.streams.append(stream)
            task = self.loop.create_task(self._run(stream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif isinstance(ev, StreamReset):
            self.resets.append((conn.index, ev.stream_id, int(ev.error_code or 0)))
            stream = conn.streams.get(ev.stream_id)
            if stream is not None:
                stream.gone = True
                stream.reset_code = int(ev.error_code or 0)
        elif isinstance(ev, DataReceived):
            conn.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, ConnectionTerminated):
            self.goaways.append((conn.index, int(ev.error_code or 0)))
        elif isinstance(ev, (WindowUpdated, RemoteSettingsChanged, StreamEnded)):
            pass

    async def _run(self, stream: H2Stream) -> None:
        try:
            await self.handler(stream)
        except (StreamGone, StreamClosedError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # recorded for the test to see
            self.errors.append(exc)
