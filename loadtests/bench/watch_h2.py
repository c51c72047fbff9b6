"""The HTTP/2 side of the bench's watch upstream (`watch_upstream`): one TLS connection that
negotiated ALPN `h2` carries many requests as streams, as a kube-apiserver's does.

A watch request (`watch=true` or `watch=1` in `:path`) gets a 200 (`application/json`) and
then the `Watchers` events, each event one DATA frame on its stream; any other request gets
the PodList (with `content-length`) and the end of the stream. Sending respects HTTP/2 flow
control: what the stream's or the connection's send window cannot take now waits on its
stream, in order, and goes when the client opens the window (WINDOW_UPDATE, or a larger
SETTINGS_INITIAL_WINDOW_SIZE). A stream whose waiting data passes `MAX_QUEUED` (a client
that does not read) is reset (CANCEL) and its watch removed; a RST_STREAM from the client
removes its watch; the connection's loss removes all of them.

A client that opens more streams than advertised (`MAX_STREAMS`) gets the connection closed
(GOAWAY PROTOCOL_ERROR, the `h2` library's rule; Go's server refuses just the stream).
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

if TYPE_CHECKING:
    from loadtests.bench.watch_upstream import Watchers

# SETTINGS_MAX_CONCURRENT_STREAMS: what a kube-apiserver advertises unless
# --http2-max-streams-per-connection is set. k8s.io/apiserver's secure serving
# (staging/src/k8s.io/apiserver/pkg/server/secure_serving.go, kubernetes/kubernetes) uses
# 100 when the flag is 0 (250 before the CVE-2023-44487 fix), and the v1.28.7 kube-apiserver
# installed here sends MAX_CONCURRENT_STREAMS 100 in its SETTINGS (checked with an h2 client).
# 1000 is what k8s.io/apiserver's RecommendedOptions set for *aggregated* API servers
# ("a proxy multiplexing many operations … into one HTTP/2 connection"), not kube-apiserver.
MAX_STREAMS = 100
MAX_QUEUED = 1 << 20  # bytes waiting for the send window, per stream
FRAME = 16384  # the smallest SETTINGS_MAX_FRAME_SIZE a peer may set: a body in such pieces


class H2Watch:
    """One watch: a stream of an `H2Handler`'s connection."""

    def __init__(self, conn: H2Handler, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.seq = 0  # events written to this watch
        self.watch_id = 0  # its id in `Watchers`

    @property
    def open(self) -> bool:
        return self.conn.is_open(self.stream_id)

    def deliver(self, event: bytes) -> None:
        self.conn.send(self.stream_id, event)
        self.conn.flush()


class Waiting:
    """Data of one stream that its send window could not take yet, in order."""

    def __init__(self) -> None:
        self.frames: deque[tuple[bytes, bool]] = deque()  # (data, end of stream)
        self.size = 0


class H2Handler(asyncio.Protocol):
    """One HTTP/2 connection (server side, after the TLS handshake chose `h2`)."""

    def __init__(self, watchers: Watchers, body: bytes, max_streams: int = MAX_STREAMS) -> None:
        self.watchers = watchers
        self.body = body
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.live: set[int] = set()  # streams we still send on
        self.watches: dict[int, H2Watch] = {}  # stream id -> its watch
        self.waiting: dict[int, Waiting] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for sid in list(self.live):
            self._forget(sid)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            print(f"watch upstream: HTTP/2 connection closed: {e!r}", file=sys.stderr)
            self.flush()  # the GOAWAY
            if self.transport is not None:
                self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                self._request(ev.stream_id, dict(ev.headers or []))
            elif isinstance(ev, DataReceived):  # a request body: read, so hand the window back
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, WindowUpdated):
                self._resume(None if ev.stream_id == 0 else ev.stream_id)
            elif isinstance(ev, RemoteSettingsChanged):
                self._resume(None)  # a new initial window or frame size
            elif isinstance(ev, StreamReset):
                self._forget(ev.stream_id)
            elif isinstance(ev, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self.live and self.transport is not None

    def flush(self) -> None:
        """Write what the `h2` connection has to send."""
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send `data` (at most `FRAME` bytes) as one DATA frame now, or as soon as the send
        windows allow; the stream is reset when too much waits (the client does not read)."""
        if stream_id not in self.live:
            return
        waiting = self.waiting.get(stream_id)
        if waiting is None and self._fits(stream_id, len(data)):
            self._data(stream_id, data, end)
            return
        if waiting is None:
            waiting = self.waiting[stream_id] = Waiting()
        waiting.frames.append((data, end))
        waiting.size += len(data)
        if waiting.size > MAX_QUEUED:
            print(
                f"watch upstream: stream {stream_id} reset: {waiting.size} bytes unread",
                file=sys.stderr,
            )
            self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._forget(stream_id)

    def _request(self, stream_id: int, headers: dict[bytes, bytes]) -> None:
        self.live.add(stream_id)
        path = headers.get(b":path", b"")
        if b"watch=true" in path or b"watch=1" in path:
            self.conn.send_headers(
                stream_id,
                [
                    (b":status", b"200"),
                    (b"content-type", b"application/json"),
                    (b"cache-control", b"no-cache, private"),
                ],
            )
            watch = H2Watch(self, stream_id)
            watch.watch_id = self.watchers.add(watch, burst=b"bench-burst=1" in path)
            self.watches[stream_id] = watch
            return
        self.conn.send_headers(
            stream_id,
            [
                (b":status", b"200"),
                (b"content-type", b"application/json"),
                (b"cache-control", b"no-cache, private"),
                (b"content-length", b"%d" % len(self.body)),
            ],
        )
        pieces = [self.body[i : i + FRAME] for i in range(0, len(self.body), FRAME)] or [b""]
        for i, piece in enumerate(pieces):
            self.send(stream_id, piece, end=i == len(pieces) - 1)

    def _fits(self, stream_id: int, size: int) -> bool:
        window = min(
            self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
        )
        return size <= window

    def _data(self, stream_id: int, data: bytes, end: bool) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)
        if end:
            self._forget(stream_id)

    def _resume(self, stream_id: int | None) -> None:
        """Send what waits on `stream_id` (None: on every stream, oldest first) as far as the
        windows allow."""
        for sid in [stream_id] if stream_id is not None else list(self.waiting):
            waiting = self.waiting.get(sid)
            while waiting is not None and waiting.frames:
                data, end = waiting.frames[0]
                if not self._fits(sid, len(data)):
                    break
                waiting.frames.popleft()
                waiting.size -= len(data)
                self._data(sid, data, end)
            if waiting is not None and not waiting.frames:
                self.waiting.pop(sid, None)

    def _forget(self, stream_id: int) -> None:
        """Stop sending on `stream_id`: drop what waits, remove its watch."""
        self.live.discard(stream_id)
        self.waiting.pop(stream_id, None)
        watch = self.watches.pop(stream_id, None)
        if watch is not None:
            self.watchers.remove(watch.watch_id)
