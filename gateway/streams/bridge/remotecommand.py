"""exec, attach and cp across the two upgrades: WebSocket channel messages on one side,
SPDY streams named by `streamtype` on the other.

WebSocket client → SPDY tenant: the gateway opens the streams a SPDY client opens for the
request's flags (error, then stdin, stdout, stderr without a TTY, resize with one), turns
stdin and resize messages into their streams' data, v5's "close stdin" into stdin's FIN,
and the tenant's stdout/stderr/error data into channel messages. When the tenant ends the
error stream (the exit status has been sent), the client gets a normal close.

SPDY client → WebSocket tenant: the gateway answers the client's streams, sends their data
as channel messages (stdin's FIN as v5's close message), and writes what the tenant sends
on the matching stream; the tenant's close ends stdout, stderr and the error stream.
Output that arrives before the client opened its stream waits (bounded).
"""

from __future__ import annotations

import asyncio

from gateway.streams import spdy, websocket
from gateway.streams.bridge import WebSocketEnd
from gateway.streams.channels import (
    CLOSE,
    ERROR,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    STREAM_TYPES,
    V5,
)
from gateway.streams.events import ChannelTap
from gateway.streams.relay import Ends
from gateway.streams.upgrade import StreamRequest

MAX_EARLY_OUTPUT = 1 << 20
CLIENT_STREAMS_SECONDS = 10.0  # how long a finished session waits for a SPDY client's streams
_NAMES = {channel: name for name, channel in STREAM_TYPES.items()}


def spdy_channels(request: StreamRequest) -> list[int]:
    """The streams a SPDY client opens for these flags, in client-go's order."""
    wanted = [ERROR]
    if request.stdin:
        wanted.append(STDIN)
    if request.stdout:
        wanted.append(STDOUT)
    if request.stderr and not request.tty:
        wanted.append(STDERR)
    if request.tty:
        wanted.append(RESIZE)
    return wanted


class WebSocketClientSpdyTenant:
    """The client speaks `v4`/`v5.channel.k8s.io`, the tenant SPDY/3.1 `v4.channel.k8s.io`."""

    def __init__(
        self, ends: Ends, request: StreamRequest, client_protocol: str, tap: ChannelTap | None
    ) -> None:
        self.ends = ends
        self.request = request
        self.v5 = client_protocol == V5
        self.tap = tap
        self.client = WebSocketEnd(ends.to_client, client_role=False)
        self.frames = spdy.Reader()
        self.headers_out = spdy.HeaderWriter()
        self.headers_in = spdy.HeaderReader()
        self.stream_of: dict[int, int] = {}  # channel → stream id
        self.channel_of: dict[int, int] = {}  # stream id → channel
        self.done = False

    def start(self) -> None:
        for index, channel in enumerate(spdy_channels(self.request)):
            stream_id = 1 + 2 * index
            self.stream_of[channel] = stream_id
            self.channel_of[stream_id] = channel
            block = self.headers_out.block({"streamtype": _NAMES[channel]})
            self.ends.to_tenant(spdy.syn_stream(stream_id, block))

    def from_client(self, data: bytes) -> None:
        try:
            messages = self.client.feed(data)
        except websocket.ProtocolError as exc:
            self._finish(f"client WebSocket: {exc}", websocket.CLOSE_PROTOCOL_ERROR)
            return
        for payload in messages:
            if not payload:
                continue
            channel, body = payload[0], payload[1:]
            if channel in (STDIN, RESIZE):
                stream_id = self.stream_of.get(channel)
                if stream_id is not None and body:
                    self.ends.to_tenant(spdy.data(stream_id, body))
                if self.tap is not None:
                    self.tap.from_client(channel, body)
            elif channel == CLOSE and self.v5 and body[:1] == bytes([STDIN]):
                stream_id = self.stream_of.get(STDIN)
                if stream_id is not None:
                    self.ends.to_tenant(spdy.data(stream_id, fin=True))
        if self.client.close_received:
            self._finish("", websocket.CLOSE_NORMAL)

    def from_tenant(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
            for frame in frames:
                if isinstance(frame, spdy.Data):
                    self._data(frame)
                else:
                    self._control(frame)
        except spdy.ProtocolError as exc:
            self._finish(f"tenant SPDY: {exc}", websocket.CLOSE_INTERNAL_ERROR)

    def _data(self, frame: spdy.Data) -> None:
        channel = self.channel_of.get(frame.stream_id)
        if channel is None:
            return
        if frame.payload and channel in (STDOUT, STDERR, ERROR):
            self.client.send(bytes([channel]) + frame.payload)
            if self.tap is not None:
                self.tap.from_tenant(channel, frame.payload)
        if frame.fin and channel == ERROR:
            self._finish("", websocket.CLOSE_NORMAL)  # the exit status has been sent

    def _control(self, frame: spdy.Control) -> None:
        if frame.type in (spdy.SYN_REPLY, spdy.HEADERS):
            self.headers_in.read(spdy.header_block(frame))
        elif frame.type == spdy.SYN_STREAM:
            self.headers_in.read(spdy.header_block(frame))  # keep the zlib stream in step
            self.ends.to_tenant(
                spdy.rst_stream(spdy.stream_id_of(frame.body), spdy.RST_REFUSED_STREAM)
            )
        elif frame.type == spdy.PING:
            self.ends.to_tenant(spdy.control(spdy.PING, frame.body[:4]))
        elif frame.type == spdy.RST_STREAM:
            if self.channel_of.get(spdy.stream_id_of(frame.body)) == ERROR:
                self._finish("the tenant reset the error stream", websocket.CLOSE_INTERNAL_ERROR)
        elif frame.type == spdy.GOAWAY:
            self._finish("", websocket.CLOSE_NORMAL)

    def _finish(self, why: str, code: int) -> None:
        if self.done:
            return
        self.done = True
        self.client.close(code, why[:100])
        self.ends.end(why)

    def tenant_closed(self) -> bool:
        if not self.done:
            self.done = True
            self.client.close(websocket.CLOSE_NORMAL)
        return False


class SpdyClientWebSocketTenant:
    """The client speaks SPDY/3.1 `v4.channel.k8s.io`, the tenant `v4`/`v5.channel.k8s.io`
    over WebSocket (`tenant_protocol`: the one it chose)."""

    def __init__(
        self, ends: Ends, request: StreamRequest, tenant_protocol: str, tap: ChannelTap | None
    ) -> None:
        self.ends = ends
        self.request = request
        self.v5 = tenant_protocol == V5
        self.tap = tap
        self.tenant = WebSocketEnd(ends.to_tenant, client_role=True)
        self.frames = spdy.Reader()
        self.headers_in = spdy.HeaderReader()
        self.headers_out = spdy.HeaderWriter()
        self.channel_of: dict[int, int] = {}  # the client's stream id → channel
        self.stream_of: dict[int, int] = {}  # channel → the client's stream id
        self.expected = set(spdy_channels(request))
        self.early: list[tuple[int, bytes]] = []  # output before its stream was opened
        self.early_bytes = 0
        self.done = False  # the tenant's side has ended
        self.completed = False  # the client's side has been ended too
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        return None

    def from_client(self, data: bytes) -> None:
        try:
            for frame in self.frames.feed(data):
                if isinstance(frame, spdy.Data):
                    self._data(frame)
                else:
                    self._control(frame)
        except spdy.ProtocolError as exc:
            self._finish(f"client SPDY: {exc}")

    def _data(self, frame: spdy.Data) -> None:
        channel = self.channel_of.get(frame.stream_id)
        if channel not in (STDIN, RESIZE):
            return
        if frame.payload:
            self.tenant.send(bytes([channel]) + frame.payload)
            if self.tap is not None:
                self.tap.from_client(channel, frame.payload)
        if frame.fin and channel == STDIN:
            self._stdin_closed()

    def _stdin_closed(self) -> None:
        if self.v5:
            self.tenant.send(bytes([CLOSE, STDIN]))

    def _control(self, frame: spdy.Control) -> None:
        if frame.type == spdy.SYN_STREAM:
            stream_id = spdy.stream_id_of(frame.body)
            headers = self.headers_in.read(spdy.header_block(frame))
            channel = STREAM_TYPES.get((headers.get("streamtype") or [""])[0])
            self.ends.to_client(spdy.syn_reply(stream_id, self.headers_out.block({})))
            if channel is None:
                return
            self.channel_of[stream_id] = channel
            self.stream_of[channel] = stream_id
            if frame.flags & spdy.FLAG_FIN and channel == STDIN:
                self._stdin_closed()
            if self.done and self._client_ready():
                self._complete("")
            elif self.early:
                self._release_early()
        elif frame.type == spdy.HEADERS:
            self.headers_in.read(spdy.header_block(frame))
        elif frame.type == spdy.PING:
            self.ends.to_client(spdy.control(spdy.PING, frame.body[:4]))
        elif frame.type == spdy.GOAWAY:  # the client is leaving: nothing to wait for
            self.done = True
            self.tenant.close(websocket.CLOSE_GOING_AWAY)
            self._complete("")

    def from_tenant(self, data: bytes) -> None:
        try:
            messages = self.tenant.feed(data)
        except websocket.ProtocolError as exc:
            self._finish(f"tenant WebSocket: {exc}")
            return
        for payload in messages:
            if payload and payload[0] in (STDOUT, STDERR, ERROR):
                self._output(payload[0], payload[1:])
        if self.tenant.close_received:
            self._finish("")

    def _output(self, channel: int, body: bytes) -> None:
        if self.tap is not None and body:
            self.tap.from_tenant(channel, body)
        stream_id = self.stream_of.get(channel)
        if stream_id is not None and not self.early:
            if body:
                self.ends.to_client(spdy.data(stream_id, body))
            return
        if channel not in self.expected or not body:
            return  # a stream the client will not open (stderr on a TTY)
        self.early_bytes += len(body)
        if self.early_bytes > MAX_EARLY_OUTPUT:
            self._finish(f"the client did not open its {_NAMES[channel]} stream")
            return
        self.early.append((channel, body))

    def _release_early(self) -> None:
        """Send what waited, in arrival order, up to the first piece whose stream the client
        has not opened yet (so stdout never overtakes the exit status, nor the other way)."""
        sent = 0
        for channel, body in self.early:
            stream_id = self.stream_of.get(channel)
            if stream_id is None:
                break
            self.ends.to_client(spdy.data(stream_id, body))
            sent += 1
        if sent:
            del self.early[:sent]
            self.early_bytes = sum(len(body) for _, body in self.early)

    def _finish(self, why: str) -> None:
        """The tenant's side ended (its close, a protocol error, the client's GOAWAY)."""
        if self.done:
            return
        self.done = True
        self.tenant.close(websocket.CLOSE_NORMAL if not why else websocket.CLOSE_GOING_AWAY)
        if why or self._client_ready():
            self._complete(why)
        else:
            self._wait_for_client()

    def _client_ready(self) -> bool:
        """The client has opened every stream output goes to (kubectl does so right after
        the 101, but a short command can finish before)."""
        return all(
            channel in self.stream_of
            for channel in self.expected
            if channel in (STDOUT, STDERR, ERROR)
        )

    def _wait_for_client(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                CLIENT_STREAMS_SECONDS, self._complete, "the client did not open its streams"
            )

    def _complete(self, why: str) -> None:
        """Give the client what waited, end its streams, end the session (once)."""
        if self.completed:
            return
        self.completed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release_early()
        self._end_client_streams()
        self.ends.end(why)

    def _end_client_streams(self) -> None:
        for channel in (STDOUT, STDERR, ERROR):
            stream_id = self.stream_of.get(channel)
            if stream_id is not None:
                self.ends.to_client(spdy.data(stream_id, fin=True))

    def tenant_closed(self) -> bool:
        if self.completed:
            return False
        self.done = True
        if self._client_ready():
            self.completed = True
            self._release_early()
            self._end_client_streams()
            return False
        self._wait_for_client()
        return True
