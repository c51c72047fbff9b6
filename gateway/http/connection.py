"""A client connection: HTTP/1.1 parsing with httptools, keep-alive, pipelining, tunnels.

This sits below any framework on purpose: it must hand SPDY/3.1 and WebSocket upgrades
over as raw byte tunnels, and its per-request cost sets the gateway's throughput.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import httptools

from gateway.http.exchange import Exchange
from gateway.http.headers import RequestHeaders
from gateway.http.status import PHRASES, status_body

log = logging.getLogger("vgate.server")

BODY_BUFFER_LIMIT = 256 * 1024


class Limits(Protocol):
    max_request_head_bytes: int
    max_request_body_bytes: int
    keepalive_timeout_seconds: float


class Dispatcher(Protocol):
    def dispatch(self, exchange: Exchange) -> None: ...

    def done(self, exchange: Exchange) -> None: ...


class ClientConnection(asyncio.Protocol):
    """Parses requests, runs one exchange at a time (pipelined ones wait), streams output."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        connections: set[ClientConnection],
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.connections = connections
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.closing = False
        self.closed = False
        self.current: Exchange | None = None
        self._parsing: Exchange | None = None
        self._pipeline: deque[Exchange] = deque()
        # the request head being parsed (reset once it is complete, so no message-begin
        # callback is needed)
        self._url = b""
        self._headers = RequestHeaders()
        self._head_bytes = 0
        self._keepalive: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # None while a request is in progress
        self._corked: list[bytes] | None = None
        self._read_paused = False
        # tunnel mode (after a 101): raw bytes go to `tunnel_sink`
        self.tunnel_sink: Callable[[bytes], None] | None = None
        self.tunnel_buffer: list[bytes] | None = None
        self.on_write_pause: Callable[[bool], None] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.connections.add(self)
        self._arm_keepalive()

    def data_received(self, data: bytes) -> None:
        if self.tunnel_sink is not None:
            self.tunnel_sink(data)
            return
        if self.tunnel_buffer is not None:
            self.tunnel_buffer.append(data)
            return
        self._idle_since = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.tunnel_buffer = [data[offset:]] if offset < len(data) else []
        except _TooLarge as exc:
            self._reject(exc.code, exc.message)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _TooLarge):  # raised inside a parser callback
                self._reject(cause.code, cause.message)
            elif not self.closed:
                self._reject(400, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.connections.discard(self)
        if self._keepalive is not None:
            self._keepalive.cancel()
        for ex in (self.current, *self._pipeline):
            if ex is not None and ex.client_gone_hook is not None:
                ex.client_gone_hook()
        current = self.current
        if current is not None and not current.finished:
            current.finished = True
            self.current = None
            self.dispatcher.done(current)
        self._pipeline.clear()

    def pause_writing(self) -> None:
        if self.on_write_pause is not None:
            self.on_write_pause(True)

    def resume_writing(self) -> None:
        if self.on_write_pause is not None:
            self.on_write_pause(False)

    # -- httptools callbacks --------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.limits.max_request_head_bytes:
            raise _TooLarge(414, "request URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.limits.max_request_head_bytes:
            raise _TooLarge(431, "request headers too large "
                                 f"(limit {self.limits.max_request_head_bytes} bytes)")
        self._headers.add(name, value)

    def on_headers_complete(self) -> None:
        parser = self.parser
        exchange = Exchange(
            self,
            parser.get_method(),
            self._url,
            self._headers,
            http11=parser.get_http_version() == "1.1",
            keep_alive=parser.should_keep_alive(),
            upgrade=parser.should_upgrade(),
        )
        self._url = b""
        self._headers = RequestHeaders()
        self._head_bytes = 0
        if (exchange.content_length or 0) > self.limits.max_request_body_bytes:
            raise _TooLarge(413, "request body too large")
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
            raise _TooLarge(413, "request body too large")
        if exchange.body_sink is None and exchange.body_bytes > BODY_BUFFER_LIMIT:
            self._pause_reading()

    def on_message_complete(self) -> None:
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
            self._start(self._pipeline.popleft())
            return
        self._resume_reading()
        self._arm_keepalive()

    # -- output and flow control ---------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif not self.closed and self.transport is not None:
            self.transport.write(data)

    def cork(self) -> None:
        """Collect writes until `uncork` (one send for a response head and body that
        arrived together from upstream, instead of one per piece)."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked:
            self.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    def pause_reading(self) -> None:
        """Backpressure from the upstream side (its write buffer is full)."""
        self._pause_reading()

    def resume_reading(self) -> None:
        if self.current is not None and self.current.body_sink is None and self.tunnel_sink is None:
            return  # still buffering a body nobody consumes yet
        self._resume_reading()

    def start_tunnel(self, sink: Callable[[bytes], None]) -> None:
        """After a 101: send every byte the client sent (and sends) to `sink`."""
        buffered = self.tunnel_buffer or []
        self.tunnel_buffer = None
        self.tunnel_sink = sink
        for chunk in buffered:
            if chunk:
                sink(chunk)
        self._resume_reading()

    def _arm_keepalive(self) -> None:
        """The connection is idle from now on. One timer per connection checks idleness
        lazily, so a request costs no timer of its own."""
        self._idle_since = self.loop.time()
        if self._keepalive is None:
            self._keepalive = self.loop.call_at(
                self._idle_since + self.limits.keepalive_timeout_seconds, self._idle_timeout
            )

    def _idle_timeout(self) -> None:
        self._keepalive = None
        if self.closed:
            return
        timeout = self.limits.keepalive_timeout_seconds
        idle_since = self._idle_since
        if idle_since is None or self.current is not None or self._pipeline:
            # busy (or a request head is arriving): look again one timeout from now
            self._keepalive = self.loop.call_later(timeout, self._idle_timeout)
        elif self.loop.time() - idle_since >= timeout:
            self.close()
        else:
            self._keepalive = self.loop.call_at(idle_since + timeout, self._idle_timeout)

    def _reject(self, code: int, message: str) -> None:
        body = status_body(code, message)
        self.write(
            b"HTTP/1.1 %d %b\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
            % (code, PHRASES.get(code, "Bad Request").encode(), len(body), body)
        )
        self.close()

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
        if self.transport is not None:
            self.closed = True
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful shutdown: close idle connections now, others after their exchange."""
        self.closing = True
        if self.current is None:
            self.close()


class _TooLarge(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
