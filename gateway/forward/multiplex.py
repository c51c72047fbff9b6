"""Long-running requests to a TLS tenant as HTTP/2 streams, many on one connection.

A watch (or `logs -f`) relayed over HTTP/1.1 holds an upstream connection for as long as it
runs: a second file descriptor and a TLS session per watch. kube-apiserver speaks HTTP/2
(ALPN ``h2``, as client-go does with it), so the gateway carries these requests as streams of
a few shared connections per tenant instead: a worker then needs one descriptor per watch
(the client's), and the per-watch TLS state upstream goes.

Flow control: the connection's receive window is opened to its maximum once, so a stalled
stream never holds the others up; each stream's window (`STREAM_WINDOW`) is handed back as
its bytes are written to the client, and held while the client's connection is paused
(its write buffer is full). A slow client stalls its own stream only, and what waits for it
is bounded by the stream window.

The bounds of the HTTP/1.1 path hold here too: the response head (`HeadLimits`: hpack's
header-list size and the number of fields), a deadline for every response head, and bytes
that bring no progress (control frames, empty data) cut the connection past
`HeadLimits.max_bytes`; so does a frame header announcing more than SETTINGS_MAX_FRAME_SIZE
(bytes that are not HTTP/2), at once. A response that fails before its head is answered
through the forwarder's failure handler (which retries an unprocessed request once over
HTTP/1.1); a stream that fails after its head breaks the client's stream, as an HTTP/1.1
connection lost mid-body does. A GOAWAY retries the streams it says were never processed
and lets the others run to their end; new streams go to another connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from gateway.forward.failure import Failure, credential_rejected
from gateway.forward.response import client_head

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import Frame, GoAwayFrame

    from gateway.flow import Flow
    from gateway.forward.multiplex_pool import MultiplexPool
    from gateway.http.exchange import Exchange

log = logging.getLogger("vgate.forward")

#: each stream's receive window: what the tenant may send before the gateway hands it back
STREAM_WINDOW = 256 * 1024
_MAX_WINDOW = 2**31 - 1
#: never forwarded as HTTP/2 fields (RFC 9113 §8.2.2); `Host` becomes `:authority`
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)


class _Connection(h2.connection.H2Connection):
    """h2's client connection, except that a GOAWAY received leaves it open: the streams at
    or below its last stream id may still complete (RFC 9113 §6.8), as a server that shuts
    down gracefully expects. h2 itself moves to CLOSED at once and then refuses every frame
    that follows, which broke those streams (python-hyper/h2#1181); nothing new is opened
    here after a GOAWAY (`MultiplexConnection.going_away`)."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = frame.error_code
        with contextlib.suppress(ValueError):  # a code of its own stays a number
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class NotMultiplexed(Exception):
    """The tenant's API server did not choose HTTP/2 (ALPN): use HTTP/1.1."""


def request_fields(head: bytes, authority: bytes) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header fields for an HTTP/1.1 request head as the rewrite step built it:
    pseudo-fields first, names lowercase, connection-specific fields left out (`TE` only as
    ``trailers``)."""
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    fields = [
        (b":method", method),
        (b":scheme", b"https"),
        (b":authority", authority),
        (b":path", target),
    ]
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip(b" \t")
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value.lower() != b"trailers"):
            continue
        fields.append((name, value))
    return fields


class MultiplexStream:
    """One request on a `MultiplexConnection`: its flow and what its window owes."""

    __slots__ = (
        "conn",
        "deadline",
        "exchange",
        "flow",
        "paused",
        "responded",
        "stream_id",
        "unacked",
    )

    def __init__(self, conn: MultiplexConnection, stream_id: int, flow: Flow) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.flow: Flow | None = flow
        self.exchange: Exchange | None = flow.exchange
        self.responded = False
        self.paused = False  # the client's connection cannot take more now
        self.unacked = 0  # bytes relayed while paused: handed back on resume
        self.deadline: asyncio.TimerHandle | None = None

    def client_paused(self, paused: bool) -> None:
        """The client's write buffer filled up (or drained): hold (or hand back) the
        stream's window."""
        self.paused = paused
        if not paused and self.unacked:
            owed, self.unacked = self.unacked, 0
            self.conn.acknowledge(self, owed)
            self.conn.flush()

    def client_gone(self) -> None:
        """The client went away: cancel the upstream stream at once."""
        self.conn.cancel(self)


class MultiplexConnection(asyncio.Protocol):
    """An HTTP/2 connection to one tenant's API server, carrying many streams.

    `ready` resolves once the server's first SETTINGS came (its stream limit is known), or
    fails with `NotMultiplexed` when TLS chose another protocol than ``h2``."""

    def __init__(self, pool: MultiplexPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.h2 = _Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, MultiplexStream] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.going_away = False
        self.closed = False
        self.idle_since = time.monotonic()
        self._stalled = 0  # bytes received since the last one that moved a stream on
        self._frame_head = bytearray()  # an incomplete frame header (9 bytes) so far
        self._frame_left = 0  # payload bytes of the current frame still to come
        self._flush_due = False  # a `flush` is scheduled for the end of this round
        self._last_read = self.loop.time()  # when the tenant last sent anything
        self._ping_sent: float | None = None  # the health check's PING awaiting an answer
        self._alive_timer: asyncio.TimerHandle | None = None

    # -- capacity -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        if self.closed or self.going_away or not self.ready.done() or self.ready.exception():
            return 0
        limit = min(self.h2.remote_settings.max_concurrent_streams, self.pool.max_streams)
        return limit - max(len(self.streams), self.h2.open_outbound_streams)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if chosen != "h2":
            self.ready.set_exception(NotMultiplexed(f"ALPN chose {chosen or 'nothing'}"))
            self.ready.exception()  # retrieved: the pool reads it, nobody else must warn
            self.closed = True
            transport.close()
            return
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.pool.head_limits.max_bytes,
            },
        )
        self.h2.initiate_connection()
        # h2 hands MAX_HEADER_LIST_SIZE to its hpack decoder only when a changed value is
        # acknowledged, never an initial one: without this the limit announced above was
        # h2's own 64 KiB, whatever `max_response_head_bytes` said
        self.h2.decoder.max_header_list_size = self.pool.head_limits.max_bytes
        self.h2.increment_flow_control_window(_MAX_WINDOW - self.h2.inbound_flow_control_window)
        self.flush()
        self._alive_timer = self.loop.call_later(self.pool.ping_after, self._check_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_alive_timer()
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc or 'closed'}"))
            self.ready.exception()
        self.pool.lost(self)
        why = f"connection lost: {exc or 'closed'}"
        for stream in list(self.streams.values()):
            self._end(stream, Failure(why, retry=not stream.responded))

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        oversized = self._oversized_frame(data)
        if oversized:
            self._broken(
                f"a frame of {oversized} bytes announced, limit {self.h2.max_inbound_frame_size}"
                " (not HTTP/2?)",
                "a broken HTTP/2 frame",
            )
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError as too_large:  # hpack: a header list too large
            max_bytes = self.pool.head_limits.max_bytes
            self._broken(
                f"response head over the limits ({too_large}, limit {max_bytes} bytes)",
                f"a response head over {max_bytes} bytes",
            )
            return
        except h2.exceptions.ProtocolError as exc:
            self._broken(f"HTTP/2 protocol error from the tenant: {exc}", "a broken HTTP/2 frame")
            return
        progress = False
        for event in events:
            progress = self._handle(event) or progress
        if progress:
            self._stalled = 0
        else:
            self._stalled += len(data)
            max_bytes = self.pool.head_limits.max_bytes
            if self._stalled > max_bytes:
                self._broken(
                    f"{self._stalled} bytes of HTTP/2 frames without any progress "
                    "(endless control frames, empty data or a response head)",
                    f"over {max_bytes} bytes without any progress (endless control frames, "
                    f"empty data, or a response head over {max_bytes} bytes)",
                )
                return
        self.flush()

    def _oversized_frame(self, data: bytes) -> int:
        """Follow the frame boundaries through `data`; the length a frame header announces
        over SETTINGS_MAX_FRAME_SIZE, else 0. h2 checks it only once the whole frame has
        arrived: bytes that are not HTTP/2 (an HTTP/1.1 answer reads as a 4 MB frame) would
        sit unnoticed until the head deadline."""
        pos, size = 0, len(data)
        while pos < size:
            if self._frame_left:
                step = min(self._frame_left, size - pos)
                self._frame_left -= step
                pos += step
                continue
            need = 9 - len(self._frame_head)
            self._frame_head += data[pos : pos + need]
            pos += need
            if len(self._frame_head) < 9:
                break
            length = int.from_bytes(self._frame_head[:3], "big")
            self._frame_head.clear()
            if length > self.h2.max_inbound_frame_size:
                return length
            self._frame_left = length
        return 0

    # -- events ---------------------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> bool:
        """Act on one event; True when it moved a stream on."""
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:  # cancelled meanwhile: the window is the connection's
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return False
            if event.data and stream.exchange is not None:
                stream.exchange.send_body(event.data)
            if stream.paused:
                stream.unacked += event.flow_controlled_length
            else:
                self.acknowledge(stream, event.flow_controlled_length)
            return bool(event.data)
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._respond(stream, event.headers)
            return True
        if isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._finish(stream)
            return True
        if isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                code = event.error_code
                refused = code == h2.errors.ErrorCodes.REFUSED_STREAM
                self._end(stream, Failure(f"stream reset by the tenant ({code!s})", retry=refused))
            return True
        if isinstance(event, h2.events.RemoteSettingsChanged):
            if not self.ready.done():
                self.ready.set_result(None)
                self.pool.connection_ready(self)
            return False
        if isinstance(event, h2.events.ConnectionTerminated):
            self._going_away(event.last_stream_id, event.error_code)
            return True
        return False  # interim answers, trailers, pings, window updates, acks

    def _respond(self, stream: MultiplexStream, headers: list[tuple[bytes, bytes]]) -> None:
        exchange, flow = stream.exchange, stream.flow
        if exchange is None or flow is None:
            return
        limits = self.pool.head_limits
        if len(headers) > limits.max_lines:
            self._refuse(stream, f"{len(headers)} fields, limit {limits.max_lines}")
            return
        status = 0
        fields = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif not name.startswith(b":"):
                fields.append((name, value))
        stream.responded = True
        self._stop_deadline(stream)
        if status == 401 and flow.credential is None:
            # the tenant refused the gateway's own credential (not a tenant-native token:
            # that one is the client's, and its 401 goes back as it is)
            self._forget(stream)
            self.cancel_stream(stream.stream_id)
            self.pool.on_failure(flow, credential_rejected(flow.tenant or "?"))
            return
        self.pool.answered()
        head, chunked, keep_alive = client_head(
            status,
            fields,
            request_id=exchange.request_id,
            method=exchange.method,
            http11=exchange.http11,
            keep_alive=exchange.keep_alive,
        )
        exchange.chunked_out = chunked
        exchange.keep_alive = keep_alive
        exchange.send_head(status, head)
        if exchange.body_done:
            # answered, and nothing left to send or retry: what only the request needed
            # (its head as sent upstream, the client's fields with its bearer token) goes
            # now instead of living as long as the watch
            flow.upstream_head = b""
            exchange.release_request_head()

    def _refuse(self, stream: MultiplexStream, what: str) -> None:
        flow = stream.flow
        self._forget(stream)
        self.cancel_stream(stream.stream_id)
        if flow is None:
            return
        tenant = flow.tenant or "?"
        self.pool.on_failure(
            flow,
            Failure(
                f"response head over the limits ({what})",
                502,
                f"the API server of tenant {tenant} sent a response head over "
                f"{self.pool.head_limits.max_lines} fields; the gateway refused it",
            ),
        )

    def _finish(self, stream: MultiplexStream) -> None:
        exchange = stream.exchange
        flow = stream.flow
        self._forget(stream)
        if exchange is None or flow is None:
            return
        if not stream.responded:
            self.pool.on_failure(flow, Failure("stream ended without a response head"))
            return
        exchange.finish()

    def _end(self, stream: MultiplexStream, failure: Failure) -> None:
        """A stream that will not complete: answer through the failure handler before its
        head, break the client's stream after it."""
        exchange, flow = stream.exchange, stream.flow
        responded = stream.responded
        self._forget(stream)
        if exchange is None or flow is None:
            return
        if not responded:
            self.pool.on_failure(flow, failure)
            return
        if not exchange.finished:
            log.warning(
                "request %s tenant %s: %s; stream cut",
                exchange.request_id.decode(),
                flow.tenant,
                failure.why,
            )
            flow.reason = f"upstream {failure.why}"
            exchange.conn.abort()
            exchange.finish(reusable=False)

    def _going_away(self, last_stream_id: int | None, code: object) -> None:
        """GOAWAY: no new streams here; those the server never processed are retried."""
        self.going_away = True
        self.pool.lost(self)
        if last_stream_id is None:
            return
        for stream in [s for s in self.streams.values() if s.stream_id > last_stream_id]:
            self._end(stream, Failure(f"GOAWAY from the tenant ({code!s})", retry=True))
        if not self.streams:
            self.close()

    def _broken(self, why: str, what: str) -> None:
        """The tenant broke the connection (`what` it sent, for the client): close it; the
        streams waiting for their head get a 502 naming the tenant, the others are cut."""
        tenant = self.pool.upstream.name
        log.warning("tenant %s: %s; HTTP/2 connection closed", tenant, why)
        self.closed = True
        self.pool.lost(self)
        if self.transport is not None:
            self.transport.abort()
        message = (
            f"the API server of tenant {tenant} sent {what}; the gateway closed the connection"
        )
        for stream in list(self.streams.values()):
            self._end(stream, Failure(why, 502, message))

    # -- streams --------------------------------------------------------------------------

    def open(self, flow: Flow, *, timeout: float) -> None:
        """Send `flow.upstream_head` as a new stream; the response goes to its exchange. Its
        head is due within `timeout` seconds."""
        exchange = flow.exchange
        upstream = flow.upstream
        assert upstream is not None
        stream_id = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(
                stream_id, request_fields(flow.upstream_head, upstream.authority), end_stream=True
            )
        except h2.exceptions.ProtocolError as exc:  # a field HTTP/2 refuses: HTTP/1.1 takes it
            log.warning(
                "request %s tenant %s: not sent as an HTTP/2 stream (%s); using HTTP/1.1",
                exchange.request_id.decode(),
                flow.tenant,
                exc,
            )
            self.pool.fallback(flow)
            return
        stream = MultiplexStream(self, stream_id, flow)
        self.streams[stream_id] = stream
        exchange.client_gone_hook = stream.client_gone
        exchange.conn.on_write_pause = stream.client_paused
        stream.deadline = self.loop.call_later(timeout, self._timed_out, stream)
        exchange.conn.resume_reading()
        self.flush_soon()

    def acknowledge(self, stream: MultiplexStream, size: int) -> None:
        """Hand `size` bytes of `stream`'s window back (sent with the next flush)."""
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # ended: nothing is owed
            self.h2.acknowledge_received_data(size, stream.stream_id)

    def cancel(self, stream: MultiplexStream) -> None:
        """The client is gone: reset the stream (the tenant stops the watch)."""
        self._forget(stream)
        self.cancel_stream(stream.stream_id)
        self.flush_soon()

    def cancel_stream(self, stream_id: int) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError):  # over on its side
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)

    def _forget(self, stream: MultiplexStream) -> None:
        self.streams.pop(stream.stream_id, None)
        self._stop_deadline(stream)
        exchange = stream.exchange
        if exchange is not None:
            exchange.client_gone_hook = None
            if exchange.conn.on_write_pause == stream.client_paused:
                exchange.conn.on_write_pause = None
        stream.exchange = None
        stream.flow = None
        if not self.streams:
            self.idle_since = time.monotonic()
            if self.going_away:
                self.close()

    def _stop_deadline(self, stream: MultiplexStream) -> None:
        if stream.deadline is not None:
            stream.deadline.cancel()
            stream.deadline = None

    def _timed_out(self, stream: MultiplexStream) -> None:
        stream.deadline = None
        if stream.responded or stream.flow is None:
            return
        flow = stream.flow
        self._forget(stream)
        self.cancel_stream(stream.stream_id)
        self.flush()
        self.pool.on_failure(flow, Failure("timeout", 504))

    # -- health ---------------------------------------------------------------------------

    def _check_alive(self) -> None:
        """client-go's HTTP/2 health check: after `ping_after` seconds without a frame from
        the tenant a PING goes out; with no frame at all `ping_timeout` seconds after it the
        connection is dead (the tenant's node gone, a half-open TCP connection), and its
        streams break so that their clients reconnect instead of waiting forever. One timer
        per connection, whatever its streams."""
        self._alive_timer = None
        if self.closed:
            return
        now, pool = self.loop.time(), self.pool
        sent = self._ping_sent
        if sent is not None and self._last_read < sent:
            if now - sent >= pool.ping_timeout:
                quiet = now - self._last_read
                self._broken(
                    f"no frame for {quiet:.0f} s, not even the answer to a PING",
                    f"nothing for {quiet:.0f} s, not even the answer to a PING",
                )
                return
            self._alive_timer = self.loop.call_at(sent + pool.ping_timeout, self._check_alive)
            return
        self._ping_sent = None
        if now - self._last_read >= pool.ping_after:
            self.h2.ping(b"vgate-hc")
            self.flush()
            self._ping_sent = now
            self._alive_timer = self.loop.call_at(now + pool.ping_timeout, self._check_alive)
        else:
            self._alive_timer = self.loop.call_at(
                self._last_read + pool.ping_after, self._check_alive
            )

    def _stop_alive_timer(self) -> None:
        if self._alive_timer is not None:
            self._alive_timer.cancel()
            self._alive_timer = None

    # -- output ---------------------------------------------------------------------------

    def flush_soon(self) -> None:
        """`flush` once the callbacks of this round of I/O events ran: the streams opened
        or cancelled in one round (thousands when a fleet of watchers reconnects) leave in
        one write instead of one each."""
        if not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_due_now)

    def _flush_due_now(self) -> None:
        self._flush_due = False
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def retire(self) -> None:
        """Take no new streams; close once the open ones ended."""
        self.going_away = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        """Say GOAWAY and close (after what is buffered went out)."""
        if self.closed:
            return
        self.closed = True
        self._stop_alive_timer()
        self.pool.lost(self)
        if self.transport is not None:
            self.h2.close_connection()
            self.transport.write(self.h2.data_to_send())
            self.transport.close()
