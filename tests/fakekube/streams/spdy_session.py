"""A SPDY/3.1 server session: answers the client's streams, pings and half-closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from . import spdy_frames as f
from .bytesource import ByteSink, ByteSource, ConnectionClosed, drain, send

CHUNK = 32 * 1024


class SpdyStream:
    """One client-opened stream: `data` yields what the client sends, `write()` answers."""

    def __init__(self, session: SpdySession, stream_id: int, headers: f.Headers) -> None:
        self._session = session
        self.id = stream_id
        self.headers = {name: values[0] if values else "" for name, values in headers.items()}
        self.data = asyncio.StreamReader()
        self.local_closed = False
        self.remote_closed = False
        self.reset = False

    @property
    def type(self) -> str:
        """The `streamtype` header: error, stdin, stdout, stderr, resize or data."""
        return self.headers.get("streamtype", "")

    async def write(self, payload: bytes) -> None:
        """Send DATA frames; dropped once the stream is closed or reset."""
        if self.local_closed or self.reset:
            return
        for start in range(0, len(payload), CHUNK):
            self._session.send(f.data(self.id, payload[start : start + CHUNK]))
        await self._session.drain()

    async def close(self) -> None:
        """Half-close our side (empty DATA with FIN)."""
        if not self.local_closed and not self.reset:
            self.local_closed = True
            self._session.send(f.data(self.id, b"", fin=True))
            await self._session.drain()

    def _feed(self, payload: bytes) -> None:
        if not self.remote_closed and payload:
            self.data.feed_data(payload)

    def _finish_remote(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self.data.feed_eof()


class SpdySession:
    """Reads frames until the peer leaves; `on_stream` is told about each new stream."""

    def __init__(
        self, source: ByteSource, sink: ByteSink, on_stream: Callable[[SpdyStream], None]
    ) -> None:
        self._source = source
        self._sink = sink
        self._on_stream = on_stream
        self._compressor = f.HeaderCompressor()
        self._decompressor = f.HeaderDecompressor()
        self.streams: dict[int, SpdyStream] = {}
        self.last_stream_id = 0
        self.goaway_received = False

    def send(self, frame: bytes) -> bool:
        """Queue one whole frame (frames are never interleaved)."""
        return send(self._sink, frame)

    async def drain(self) -> None:
        await drain(self._sink)

    async def run(self) -> None:
        """Serve until EOF, GOAWAY or a broken connection; then every stream sees EOF."""
        try:
            while not self.goaway_received:
                frame = await f.read_frame(self._source)
                if isinstance(frame, f.DataFrame):
                    self._on_data(frame)
                else:
                    self._on_control(frame)
        except ConnectionClosed:
            pass
        finally:
            for stream in self.streams.values():
                stream._finish_remote()

    def _on_data(self, frame: f.DataFrame) -> None:
        stream = self.streams.get(frame.stream_id)
        if stream is None or stream.reset:
            return
        stream._feed(frame.data)
        if frame.fin:
            stream._finish_remote()

    def _on_control(self, frame: f.ControlFrame) -> None:
        if frame.type == f.SYN_STREAM:
            self._on_syn_stream(frame)
        elif frame.type == f.RST_STREAM:
            stream = self.streams.get(f.parse_stream_id(frame.body))
            if stream is not None:
                stream.reset = True
                stream._finish_remote()
        elif frame.type == f.PING:
            ping_id = int.from_bytes(frame.body[:4], "big")
            if ping_id % 2 == 1:  # the client's ping: echo it; even ids would be ours
                self.send(f.ping(ping_id))
        elif frame.type == f.GOAWAY:
            self.goaway_received = True
        elif frame.type == f.HEADERS:
            self._decompressor.decompress(frame.body[4:])  # keep the zlib stream in step
        # SETTINGS and WINDOW_UPDATE need no answer: spdystream does no flow control.

    def _on_syn_stream(self, frame: f.ControlFrame) -> None:
        syn = f.parse_syn_stream(frame.body)
        headers = self._decompressor.decompress(syn.block)
        if syn.stream_id % 2 == 0 or syn.stream_id <= self.last_stream_id:
            self.send(f.rst_stream(syn.stream_id, f.RST_PROTOCOL_ERROR))
            return
        self.last_stream_id = syn.stream_id
        stream = SpdyStream(self, syn.stream_id, headers)
        self.streams[syn.stream_id] = stream
        self.send(f.syn_reply(syn.stream_id, self._compressor.compress({})))
        if frame.flags & f.FLAG_FIN:
            stream._finish_remote()
        self._on_stream(stream)
