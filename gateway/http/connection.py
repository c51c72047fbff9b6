"""A client connection: HTTP/1.1 parsing with httptools, keep-alive, pipelining, tunnels.

This sits below any framework on purpose: it must hand SPDY/3.1 and WebSocket upgrades
over as raw byte tunnels, and its per-request cost sets the gateway's throughput.

Nothing is dispatched before the whole head is accepted: one valid `Host` (HTTP/1.1),
unambiguous body framing, an `Expect` the gateway can meet, an origin-form target (an
absolute-form one only when its authority is the `Host`), and an upgrade only to what
kubectl tunnels (WebSocket, SPDY/3.1). A refused head is answered with a `Status` after the
requests before it, and the connection closes.

What a client can make it hold is bounded: the head (`max_request_head_bytes`,
`max_request_header_fields`), its time (`first_byte_timeout_seconds` on a new connection,
then `request_head_timeout_seconds` from a head's first byte to its end), the body read
ahead of its consumer, pipelined requests (`MAX_PIPELINED`), and the bytes sent after an
upgrade before the upstream accepted it (`TUNNEL_BUFFER_LIMIT`; reading pauses).
Connections that have not authenticated yet count against their address's cap
(`gateway.http.admission`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import httptools

from gateway.http.admission import Admission
from gateway.http.exchange import Exchange
from gateway.http.headers import RequestHeaders
from gateway.http.status import status_body, status_line

log = logging.getLogger("vgate.server")

BODY_BUFFER_LIMIT = 256 * 1024
TUNNEL_BUFFER_LIMIT = 64 * 1024  # sent after an upgrade request, before the upstream's 101
MAX_CORKED_BYTES = 64 * 1024  # held for `uncork_soon` at most; then written at once
MAX_PIPELINED = 32  # complete request heads waiting behind the current exchange
TUNNELLED_UPGRADES = frozenset({b"websocket", b"spdy/3.1"})  # what kubectl upgrades to
_ABSOLUTE_FORM = (b"http://", b"https://")
#: what a closed connection's `parser` becomes: it calls back nothing, so the connection
#: and its parser no longer hold each other (a finished connection is then freed by
#: reference counting, not left to the cycle collector)
_CLOSED_PARSER = httptools.HttpRequestParser(object())


class Limits(Protocol):
    max_request_head_bytes: int
    max_request_header_fields: int
    max_request_body_bytes: int
    keepalive_timeout_seconds: float
    request_head_timeout_seconds: float
    first_byte_timeout_seconds: float


class Dispatcher(Protocol):
    def dispatch(self, exchange: Exchange) -> None: ...

    def done(self, exchange: Exchange) -> None: ...


class ClientConnection(asyncio.Protocol):
    """Parses requests, runs one exchange at a time (pipelined ones wait), streams output."""

    # slots: an open watch holds one of these for hours, tens of thousands per worker
    __slots__ = (
        "_corked",
        "_corked_bytes",
        "_fields_left",
        "_flush_due",
        "_had_request",
        "_head_bytes",
        "_head_since",
        "_headers",
        "_idle_since",
        "_max_fields",
        "_parsing",
        "_pipeline",
        "_read_paused",
        "_refusal",
        "_refused",
        "_tick",
        "_timer",
        "_tunnel_buffered",
        "_url",
        "admission",
        "closed",
        "closing",
        "connections",
        "current",
        "dispatcher",
        "limits",
        "loop",
        "on_write_pause",
        "parser",
        "peer",
        "transport",
        "tunnel_buffer",
        "tunnel_sink",
        "unauthenticated",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        connections: set[ClientConnection],
        admission: Admission | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.connections = connections
        self.admission = admission
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.closing = False
        self.closed = False
        self.unauthenticated = False  # counted against the peer's cap until `authenticated`
        self.current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._pipeline: list[Exchange] = []  # at most MAX_PIPELINED (a deque costs 600 B)
        # the request head being parsed (reset once it is complete, so no message-begin
        # callback is needed); its fields are made with the first one (a connection that
        # waits, or streams a watch, keeps none)
        self._url = b""
        self._headers: RequestHeaders | None = None
        self._head_bytes = 0
        self._max_fields = limits.max_request_header_fields
        self._fields_left = self._max_fields
        # when the deadline timer first saw the head being parsed (within a tick of its start)
        self._head_since: float | None = None
        self._idle_since: float | None = None  # None while a request is in progress
        self._had_request = False
        self._timer: asyncio.TimerHandle | None = None
        # one timer per connection, looked at lazily: it fires at most this often while
        # the connection waits for a head, so a request costs no timer of its own
        self._tick = (
            min(
                limits.keepalive_timeout_seconds,
                limits.request_head_timeout_seconds,
                limits.first_byte_timeout_seconds,
            )
            / 2
        )
        self._corked: list[bytes] | None = None
        self._flush_due = False  # `uncork` is scheduled (`uncork_soon`)
        self._corked_bytes = 0
        self._read_paused = False
        self._refusal: bytes | None = None  # a refused head's answer, due after the current
        self._refused = False  # a head was refused: read nothing more
        # tunnel mode (after a 101): raw bytes go to `tunnel_sink`
        self.tunnel_sink: Callable[[bytes], None] | None = None
        self.tunnel_buffer: list[bytes] | None = None
        self._tunnel_buffered = 0
        self.on_write_pause: Callable[[bool], None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        admission = self.admission
        if admission is not None and admission.counts(self.peer):
            if not admission.add(self.peer):
                self.closed = True  # refused cheaply: one canned write, nothing parsed
                transport.write(admission.refusal)  # type: ignore[attr-defined]
                transport.close()
                return
            self.unauthenticated = True
        self.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_sink is not None:
            self.tunnel_sink(data)
            return
        if self.tunnel_buffer is not None:
            self._buffer_tunnel(data)
            return
        if self._refused:
            return
        self._idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.tunnel_buffer = []
            self._buffer_tunnel(data[offset:])
        except _Refused as refused:
            self._refuse(refused.code, refused.message)
        except httptools.HttpParserError as malformed:
            cause = malformed.__context__
            if isinstance(cause, _Refused):  # raised inside a parser callback
                self._refuse(cause.code, cause.message)
            elif not self.closed:
                self._refuse(400, f"malformed HTTP request: {malformed}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        self._release_admission()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for ex in (self.current, *self._pipeline):
            if ex is not None and ex.client_gone_hook is not None:
                ex.client_gone_hook()
        current = self.current
        if current is not None and not current.finished:
            current.finished = True
            self.current = None
            self.dispatcher.done(current)
        self._pipeline.clear()
        self._let_go()

    def _let_go(self) -> None:
        """Drop what refers back to this connection (its parser's callbacks, its
        exchanges' `conn`, the transport's protocol, callbacks bound to a stream), so the
        whole connection is freed when its last reference goes, without waiting for (and
        lengthening) a pause of the cycle collector."""
        self.parser = _CLOSED_PARSER
        self.transport = None
        self.current = None
        self._parsing = None
        self._headers = None
        self.tunnel_sink = None
        self.tunnel_buffer = None
        self.on_write_pause = None

    def pause_writing(self) -> None:
        if self.on_write_pause is not None:
            self.on_write_pause(True)

    def resume_writing(self) -> None:
        if self.on_write_pause is not None:
            self.on_write_pause(False)

    # -- admission ------------------------------------------------------------------------

    def authenticated(self) -> None:
        """A request on this connection carried a valid credential: it no longer counts
        against its address's cap of unauthenticated connections."""
        self._release_admission()

    def _release_admission(self) -> None:
        if self.unauthenticated:
            self.unauthenticated = False
            assert self.admission is not None
            self.admission.remove(self.peer)

    # -- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_request_head_bytes:
            raise _Refused(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_request_head_bytes:
            raise _Refused(
                431, f"request headers too large (limit {self.limits.max_request_head_bytes} bytes)"
            )
        self._fields_left -= 1
        if self._fields_left < 0:
            raise _Refused(
                431,
                f"too many request header fields (limit {self.limits.max_request_header_fields})",
            )
        headers = self._headers
        if headers is None:
            headers = self._headers = RequestHeaders()
        headers.add(name, value)

    def on_headers_complete(self) -> None:
        parser = self.parser
        headers, url = self._headers or RequestHeaders(), self._url
        self._url = b""
        self._headers = None
        self._head_bytes = 0
        self._fields_left = self._max_fields
        self._head_since = None
        self._had_request = True
        version = parser.get_http_version()
        http11 = version == "1.1"
        method = parser.get_method()
        upgrade = parser.should_upgrade()
        problem = None
        if not http11 and version != "1.0":  # httptools parses HTTP/0.9 and HTTP/2.0 heads
            problem = 505, f"HTTP/{version} is not supported: this listener speaks HTTP/1.1"
        if problem is None and (
            headers.hosts != 1 or headers.error is not None or headers.transfer_encoding
        ):
            problem = headers.problem(http11=http11)
        if problem is None and url[:1] != b"/":
            url, problem = _origin_form(url, headers.host)
        if problem is None and upgrade:
            has_body = bool(headers.chunked or headers.content_length)
            problem = _upgrade_problem(method, headers.upgrade, has_body=has_body)
        if problem is not None:
            raise _Refused(*problem)
        if (headers.content_length or 0) > self.limits.max_request_body_bytes:
            raise _Refused(413, "request body too large")
        if len(self._pipeline) >= MAX_PIPELINED:
            raise _Refused(429, f"more than {MAX_PIPELINED} pipelined requests")
        exchange = Exchange(
            self,
            method,
            url,
            headers,
            http11=http11,
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
        )
        self._parsing = exchange
        if self.current is None:
            self._start(exchange)
        else:
            self._pipeline.append(exchange)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        if exchange is None:
            return
        exchange.feed_body(body)
        if exchange.body_bytes > self.limits.max_request_body_bytes:
            raise _Refused(413, "request body too large")
        if exchange.body_sink is None and exchange.body_bytes > BODY_BUFFER_LIMIT:
            self._pause_reading()

    def on_message_complete(self) -> None:
        if self._headers is not None:
            # fields after a chunked body are its trailers (bounded like a head): dropped,
            # never forwarded, and never fields of the next request's head
            self._headers = None
            self._head_bytes = 0
            self._fields_left = self._max_fields
        exchange = self._parsing
        if exchange is not None:
            exchange.end_body()

    # -- exchanges -----------------------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        try:
            self.dispatcher.dispatch(exchange)
        except Exception:
            log.exception("dispatch failed")
            if not exchange.finished and exchange.status == 0:
                exchange.keep_alive = False
                exchange.fail(500, "internal error in the gateway")
            elif not exchange.finished:
                self.abort()

    def exchange_finished(self, exchange: Exchange, *, reusable: bool) -> None:
        """Called by `Exchange.finish`: move on to the next request or close."""
        if exchange is not self.current:
            return
        self.current = None
        self.dispatcher.done(exchange)
        if not (reusable and exchange.keep_alive and not exchange.body_pending) or self.closing:
            self.close()
            return
        if self._pipeline:
            self._start(self._pipeline.pop(0))
            return
        if self._refusal is not None:  # a later head was refused: answer it now, and end
            self.write(self._refusal)
            self.close()
            return
        self._resume_reading()
        self._arm_idle()

    def _refuse(self, code: int, message: str) -> None:
        """Answer a refused request head with a `Status` and close, after the exchanges
        before it (never in the middle of another response).

        Bytes refused inside a request's body (its chunk framing broke, or it grew past
        `max_request_body_bytes`) end that request as well: it can never be complete, so
        it never leaves if it waits in the pipeline, and if it is under way its upstream
        request is cancelled (the tenant would wait for the rest of the body until the
        response timeout) and the refusal is its answer, or the connection is cut when
        its answer has begun."""
        self._refused = True
        self._pause_reading()
        broken = self._parsing
        if broken is not None and broken.body_pending and not broken.finished:
            self._parsing = None
            if broken is self.current:
                self._end_broken(broken, code, message)
                return
            if broken in self._pipeline:
                self._pipeline.remove(broken)
        body = status_body(code, message)
        refusal = (
            status_line(code) + b"Content-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%b" % (len(body), body)
        )
        if self.current is None and not self._pipeline:
            self.write(refusal)
            self.close()
        else:
            self._refusal = refusal

    def _end_broken(self, exchange: Exchange, code: int, message: str) -> None:
        """The current request's body broke (`_refuse`): cancel what works on it upstream
        (or in a pending step), then answer it with the refusal and close, or cut the
        connection if its answer has begun."""
        cancel, exchange.client_gone_hook = exchange.client_gone_hook, None
        if cancel is not None:
            cancel()
        if exchange.status == 0 and not self.closed:
            exchange.keep_alive = False
            exchange.fail(code, message)  # a body is pending: the answer closes
        else:
            self.abort()

    # -- output and flow control ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
            self._corked_bytes += len(data)
        elif not self.closed and self.transport is not None:
            self.transport.write(data)

    def cork(self) -> None:
        """Collect writes until `uncork` (one send for a response head and body that
        arrived together from upstream, instead of one per piece)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        self._flush_due = False
        self._corked_bytes = 0
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def uncork_soon(self) -> None:
        """Like `uncork`, once the event loop has run the callbacks of this round of I/O
        events (before it waits for more): the answers to every request that completed
        in one round leave back to back, so a client (or a load generator) asleep on
        another CPU is woken once for them rather than once per answer, and answers to the
        same connection share one send. Writes made meanwhile join in order. Past
        `MAX_CORKED_BYTES` held (a fast stream), now: the transport's flow control must see
        them (it pauses the upstream's reading)."""
        if self._corked_bytes >= MAX_CORKED_BYTES:
            self.uncork()
        elif self._corked and not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self.uncork)
        elif not self._corked and not self._flush_due:
            self._corked = None

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._read_paused
            and self.transport is not None
            and not self.closed
            and not self._refused
        ):
            self._read_paused = False
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        """Backpressure from the upstream side (its write buffer is full)."""
        self._pause_reading()

    def resume_reading(self) -> None:
        if self.current is not None and self.current.body_sink is None and self.tunnel_sink is None:
            return  # still buffering a body (or an upgrade's first bytes) nobody consumes yet
        self._resume_reading()

    def _buffer_tunnel(self, data: bytes) -> None:
        """Bytes after an upgrade request, before the upstream accepted it: kept for the
        tunnel, at most `TUNNEL_BUFFER_LIMIT` (then reading pauses until the tunnel starts,
        or for good when the upstream refuses the upgrade)."""
        if not data:
            return
        assert self.tunnel_buffer is not None
        self.tunnel_buffer.append(data)
        self._tunnel_buffered += len(data)
        if self._tunnel_buffered >= TUNNEL_BUFFER_LIMIT:
            self._pause_reading()

    def start_tunnel(self, sink: Callable[[bytes], None]) -> None:
        """After a 101: send every byte the client sent (and sends) to `sink`."""
        buffered = self.tunnel_buffer or []
        self.tunnel_buffer = None
        self._tunnel_buffered = 0
        self.tunnel_sink = sink
        for chunk in buffered:
            sink(chunk)
        self._resume_reading()

    # -- deadlines -------------------------------------------------------------------------

    def _arm_idle(self) -> None:
        """The connection waits for a request head from now on. A pending timer is due
        within a tick; a busy connection has none (`_check_deadlines`), so one is armed."""
        self._idle_since = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(self._idle_since + self._tick, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Close a connection whose head is overdue (408), that sent nothing in time after
        it opened, or that stayed idle past the keep-alive timeout; look again later.

        A request costs no clock read of its own: bytes arriving only clear `_idle_since`,
        and the first look that finds a head in progress notes its start, so a head gets
        `request_head_timeout_seconds` from within one tick of its first byte."""
        self._timer = None
        if self.closed:
            return
        loop, limits = self.loop, self.limits
        now = loop.time()
        if self.current is not None or self._pipeline:
            # busy: exchanges have their own clocks, and the connection holds no timer
            # until its exchanges are done (`exchange_finished` arms one): an open watch
            # costs no timer and no wake-up for as long as it streams
            return
        idle_since = self._idle_since
        if idle_since is None:  # bytes of a head have arrived since the connection was idle
            if self._head_since is None:
                self._head_since = now
            due = self._head_since + limits.request_head_timeout_seconds
            if now >= due:
                self._refuse(
                    408,
                    f"request head not received within {limits.request_head_timeout_seconds:g}s",
                )
                return
        else:
            self._head_since = None
            due = idle_since + (
                limits.keepalive_timeout_seconds
                if self._had_request
                else limits.first_byte_timeout_seconds
            )
            if now >= due:
                self.close()
                return
        self._timer = loop.call_at(min(due, now + self._tick), self._check_deadlines)

    # -- closing -------------------------------------------------------------------------

    def close(self) -> None:
        """Close after pending output is flushed."""
        self.uncork()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now (mid-response failures)."""
        self._corked = None
        self._corked_bytes = 0
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful shutdown: close idle connections now, others after their exchange."""
        self.closing = True
        if self.current is None:
            self.close()


def _origin_form(target: bytes, host: bytes | None) -> tuple[bytes, tuple[int, str] | None]:
    """An absolute-form target (``http://authority/path``) as the origin-form path, when
    its authority is the `Host`; other forms are left to the route step (which refuses
    anything but a path)."""
    scheme_end = target.find(b"://")
    if scheme_end < 0 or target[: scheme_end + 3].lower() not in _ABSOLUTE_FORM:
        return target, None
    rest = target[scheme_end + 3 :]
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        found = rest.find(stop)
        if 0 <= found < end:
            end = found
    authority, path = rest[:end], rest[end:]
    if host is None or b"@" in authority or authority.lower() != host.lower():
        return target, (
            400,
            "the authority of an absolute-form request target must be the Host header's",
        )
    return (path if path.startswith(b"/") else b"/" + path), None


def _upgrade_problem(
    method: bytes, upgrade: bytes | None, *, has_body: bool = False
) -> tuple[int, str] | None:
    """Only what kubectl tunnels is tunnelled: one WebSocket or SPDY/3.1 upgrade, without
    a body (kubectl never sends one; its bytes would be taken for the tunnel's or never
    reach the tenant, which may wait for them before it answers)."""
    if method == b"CONNECT":
        return 405, "CONNECT is not supported"
    if has_body:
        return 400, "an upgrade request must not have a body"
    if upgrade is None or upgrade.strip(b" \t").lower() not in TUNNELLED_UPGRADES:
        offered = (upgrade or b"").decode("latin-1")[:64]
        return 400, (
            f"unsupported upgrade {offered!r}: only WebSocket and SPDY/3.1 "
            "(kubectl exec, attach, cp, port-forward) are tunnelled"
        )
    return None


class _Refused(Exception):
    """A request head the connection answers itself, with `code` and `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
