"""One HTTP/1.1 connection to a tenant's API server, driven by httptools callbacks.

Response bytes are relayed to the client as they arrive, with no task per chunk and
no buffering: when the client cannot keep up, reading from the upstream pauses (and
the other way round for request bodies). Both directions are sent once the event loop has
run the callbacks of the current round of I/O events (the request head by `send`, what one
upstream read yields by `ClientConnection.uncork_soon`): every request and answer of a
round leaves back to back, so a peer asleep on another CPU is woken once per round instead
of once per message (on a 2-vCPU VM those wake-ups were 16% of the gateway's CPU). A 101
answer turns the connection into a raw byte tunnel in both directions — that is how exec,
attach, cp and port-forward pass, whether they speak WebSocket or SPDY/3.1.

What a tenant sends is bounded before the parser sees it: the response head is held and
counted as it arrives and handed to httptools in one piece once complete (so the parser
never joins a long header piece by piece), and past `HeadLimits` the connection is cut
and the client gets a 502 naming the tenant. After the head, bytes that bring no body
progress (chunk framing, trailers) are bounded the same way. Every response head has a
deadline, watches and upgrades included; a body then streams for as long as it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httptools

from gateway.forward.failure import Failure, credential_rejected
from gateway.forward.response import client_head, sets_gateway_cookie
from gateway.http.status import PHRASES
from gateway.streams.relay import Ends, Relay
from gateway.streams.session import UnusableSwitch

if TYPE_CHECKING:
    from gateway.flow import Flow
    from gateway.forward.pool import UpstreamPool
    from gateway.http.exchange import Exchange

log = logging.getLogger("vgate.forward")

_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS"})
MAX_HELD_BODY_BYTES = 64 * 1024  # a request body chunk this large is sent at once


_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


def _delimited_by_close(status: int, method: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response's body ends where the connection does (RFC 9112 §6.3): it has
    neither Content-Length nor Transfer-Encoding, and its method and status carry a body.
    Only a clean close ends such a body; any other loss of the connection cuts it."""
    if method == b"HEAD" or status < 200 or status in (204, 304):
        return False
    return not any(name.lower() in _FRAMING for name, _ in headers)


class _Inert:
    """Receives no callbacks."""


_SPENT = httptools.HttpResponseParser(_Inert())  # the parser of every closed connection


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds on a response head from a tenant: its bytes (status line through the blank
    line) and its lines. `max_bytes` also bounds what may arrive after the head without
    any body progress (chunk framing, trailers)."""

    max_bytes: int = 65536
    max_lines: int = 256


class UpstreamConnection(asyncio.Protocol):
    """Carries one exchange at a time; returns itself to its pool when reusable."""

    # slots: an open watch holds one of these for hours, tens of thousands per worker
    __slots__ = (
        "_chunked_body",
        "_deadline",
        "_head_open",
        "_headers",
        "_held",
        "_held_lines",
        "_outgoing",
        "_progress",
        "_relay",
        "_request_sent",
        "_responded",
        "_stalled",
        "_timer",
        "_tunnel",
        "_until_close",
        "_upgrade_expected",
        "closed",
        "exchange",
        "flow",
        "idle_since",
        "limits",
        "loop",
        "parser",
        "pool",
        "reused",
        "transport",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()  # looked up once (each lookup is a getpid())
        self.flow: Flow | None = None
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._responded = False
        self._request_sent = False
        self._chunked_body = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None  # response head due by then (loop time)
        self._tunnel = False
        self._relay: Relay | None = None  # what carries a switched session, None: raw bytes
        self._upgrade_expected = False
        self._until_close = False  # the response body ends where the connection does
        self.limits: HeadLimits = pool.head_limits
        self._head_open = False  # a response head is due (set by `send`)
        self._held = bytearray()  # the incomplete head's bytes so far
        # the request head and body bytes, written once this round of I/O events is done
        self._outgoing: list[bytes] | None = None
        self._held_lines = 0
        self._progress = 0  # parser events that moved the response on (head, body, end)
        self._stalled = 0  # bytes fed since the last of them

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        # this object and its parser refer to each other: a garbage cycle that may wait for
        # a full collection. Let go of what is big now: a TLS transport keeps its buffers,
        # the parser a header value it was still joining
        self.transport = None
        self.parser = _SPENT
        self._held = bytearray()
        self._headers = []
        exchange, flow = self.exchange, self.flow
        if exchange is None or flow is None:
            return
        self._detach()
        if self._tunnel:
            # the client sees a proper end before the close; a relay still waiting for the
            # client ends that side itself (`Ends.end`)
            if self._relay is not None and self._relay.tenant_closed():
                return
            exchange.conn.close()
            exchange.finish(reusable=False)
        elif not self._responded:
            retry = self.reused and exchange.method in _IDEMPOTENT and exchange.body_bytes == 0
            self.pool.on_failure(
                self.pool, flow, Failure(f"connection lost: {exc or 'closed'}", retry=retry)
            )
        elif not exchange.finished:
            if not (self._until_close and exc is None):
                # the response was cut short: the client must see a broken stream, not an end
                exchange.conn.abort()
            # else the clean close is the end of a body delimited by it: relayed as an end
            exchange.finish(reusable=False)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            if self._relay is not None:
                self._relay.from_tenant(data)
            elif self.exchange is not None:
                self.exchange.bytes_out += len(data)
                self.exchange.conn.write(data)
            return
        if self.exchange is None:
            # nothing was asked: an idle pooled connection must not speak
            if not self.closed and self.transport is not None:
                self.transport.abort()
            return
        if self._head_open:
            limits = self.limits  # the common case first: a whole head in one read
            end = -1 if self._held else data.find(b"\r\n\r\n")
            if not (
                0 <= end <= limits.max_bytes - 4
                and data[9:10] != b"1"
                and data.count(b"\n", 0, end) <= limits.max_lines
            ):
                data = self._collect_head(data)
                if not data:
                    return
        progress = self._progress
        self._feed(data)
        if self._progress != progress:
            self._stalled = 0
        elif not self.closed:
            self._stalled += len(data)
            if self._stalled > self.limits.max_bytes:
                self._cut(
                    f"{self._stalled} bytes after the response head without body "
                    "progress (endless chunk framing or trailers)",
                    "endless data after the response head",
                )

    def _feed(self, data: bytes) -> None:
        client = self.exchange.conn if self.exchange is not None else None
        if client is not None:
            client.cork()  # what this read yields goes to the client in one write
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            if client is not None:
                client.uncork()  # the 101 head goes out before any tunnelled byte
            self._enter_tunnel(data[offset:])
        except httptools.HttpParserError as malformed:
            log.warning("malformed response from upstream: %s", malformed)
            if self.transport is not None:
                self.transport.abort()
        finally:
            if client is not None:
                client.uncork_soon()

    def _collect_head(self, data: bytes) -> bytes:
        """Hold response-head bytes until the head is complete, counting them as they come;
        return the complete head and what follows (b"" while incomplete). Past the limits
        the connection is cut before the parser has seen any of it. An interim answer
        (100 Continue) is parsed alone, then the real head is collected the same way."""
        limits = self.limits
        while True:
            held = self._held
            if held:
                start = max(len(held) - 3, 0)  # the blank line may span reads
                held += data
                buf: bytes | bytearray = held
                end = held.find(b"\r\n\r\n", start)
            else:
                buf = data
                end = data.find(b"\r\n\r\n")
            if end < 0:
                self._held_lines += data.count(b"\n")
                if len(buf) > limits.max_bytes or self._held_lines > limits.max_lines:
                    self._refuse_head(len(buf), self._held_lines)
                elif not held:
                    self._held = bytearray(data)
                return b""
            head_end = end + 4
            lines = buf.count(b"\n", 0, end)  # the header lines
            if head_end > limits.max_bytes or lines > limits.max_lines:
                self._refuse_head(head_end, lines)
                return b""
            if held:
                self._held = bytearray()
                self._held_lines = 0
                data = bytes(held)
            # "HTTP/1.1 1xx": an interim answer, unless it is the 101 of an upgrade
            if data[9:10] != b"1" or data[9:12] == b"101":
                return data
            self._feed(data[:head_end])
            data = data[head_end:]
            if not data or not self._head_open or self.closed:
                return data

    def _refuse_head(self, size: int, lines: int) -> None:
        limits = self.limits
        self._cut(
            f"response head over the limits ({size} bytes, limit {limits.max_bytes}; "
            f"{lines} lines, limit {limits.max_lines})",
            f"a response head over {limits.max_bytes} bytes or {limits.max_lines} lines",
        )

    def _cut(self, why: str, what: str) -> None:
        """The tenant sent more than the gateway takes: drop the connection; the client gets
        a 502 naming the tenant, or a broken stream when its response has begun."""
        self._held = bytearray()
        flow, exchange = self.flow, self.exchange
        if self.transport is not None:
            self.transport.abort()
        if flow is None or exchange is None:
            self.close()
            return
        self._detach()
        self.close()
        if self._responded:
            log.warning(
                "request %s tenant %s: %s; response cut",
                exchange.request_id.decode(),
                flow.tenant,
                why,
            )
            flow.reason = f"upstream {why}"
            exchange.conn.abort()
            exchange.finish(reusable=False)
            return
        tenant = flow.tenant or "?"
        self.pool.on_failure(
            self.pool,
            flow,
            Failure(
                why, 502, f"the API server of tenant {tenant} sent {what}; the gateway refused it"
            ),
        )

    # -- sending --------------------------------------------------------------------------

    def send(self, flow: Flow, *, timeout: float) -> None:
        """Write the request head and stream the body; the response goes to the flow's
        exchange. Its head is due within `timeout` seconds (watches and upgrades too)."""
        assert self.transport is not None
        exchange = flow.exchange
        self.flow = flow
        self.exchange = exchange
        self._headers = []
        self._responded = False
        self._request_sent = False
        self._head_open = True
        self._stalled = 0
        self._chunked_body = exchange.chunked_in
        self._upgrade_expected = exchange.upgrade
        self._until_close = False
        exchange.client_gone_hook = self._client_gone
        exchange.conn.on_write_pause = self._client_write_paused
        self._outgoing = [flow.upstream_head]
        self.loop.call_soon(self._send_outgoing)
        self._arm_deadline(timeout)
        if exchange.upgrade:
            self._request_sent = True
        else:
            exchange.attach_body_sink(self._body)
        exchange.conn.resume_reading()

    def _send_outgoing(self) -> None:
        outgoing, self._outgoing = self._outgoing, None
        if outgoing and self.transport is not None and not self.closed:
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def _write(self, data: bytes) -> None:
        outgoing = self._outgoing
        if outgoing is None:
            if self.transport is not None:
                self.transport.write(data)
            return
        outgoing.append(data)
        if len(data) >= MAX_HELD_BODY_BYTES or len(outgoing) > 16:  # a body streaming in:
            self._send_outgoing()  # the transport's flow control must see it now

    def _body(self, chunk: bytes | None) -> None:
        if self.transport is None or self.closed:
            return
        if chunk is None:
            if self._chunked_body:
                self._write(b"0\r\n\r\n")
            self._request_sent = True
        elif self._chunked_body:
            self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            self._write(chunk)

    def _client_write_paused(self, paused: bool) -> None:
        if self.transport is None or self.closed:
            return
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _arm_deadline(self, timeout: float) -> None:
        """Expect a response head within `timeout`. One timer per connection, re-armed
        lazily when it fires early, so a pooled connection costs no timer per request."""
        loop = self.loop
        self._deadline = loop.time() + timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.closed:
            return  # answered (or gone) meanwhile
        loop = self.loop
        if loop.time() < deadline:  # a later request on this connection: wait for its due
            self._timer = loop.call_at(deadline, self._check_deadline)
            return
        self._timed_out()

    def _timed_out(self) -> None:
        self._deadline = None
        flow = self.flow
        if flow is None or self._responded:
            return
        self._detach()
        self.close()
        self.pool.on_failure(self.pool, flow, Failure("timeout", 504))

    def _client_gone(self) -> None:
        """The client went away: cancel the upstream request at once."""
        self._detach()
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def _detach(self) -> None:
        self._deadline = None
        exchange = self.exchange
        if exchange is not None:
            exchange.client_gone_hook = None
            if exchange.conn.on_write_pause == self._client_write_paused:
                exchange.conn.on_write_pause = None
        self.exchange = None
        self.flow = None

    def close(self) -> None:
        self.closed = True
        self._stop_timer()
        if self.transport is not None:
            self.transport.close()

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # trailers land here too, unused (the body is re-framed); `_stalled` bounds them
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        exchange = self.exchange
        if exchange is None:
            # a response nobody asked for (it came behind the previous one): the next
            # request's answer would be read as its body, so this connection is done
            self.close()
            return
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self._headers = []
            return  # interim response (100 Continue): wait for the real one
        self._responded = True
        self._head_open = False
        self._progress += 1
        self._deadline = None  # the timer, if any, finds nothing due and ends
        if status == 401 and (self.flow is None or self.flow.credential is None):
            self._credential_rejected()  # not for a tenant-native token: that one is the
            return  # client's own, and its 401 goes back as it is
        health = self.pool.health
        if health.degraded:
            health.answered(self.pool.upstream.name)
        if (
            self._upgrade_expected
            and self.flow is not None
            and self.flow.stream is not None
            and self._stream_answer(status)
        ):
            return
        if status == 101 and self._upgrade_expected:
            lines = [b"HTTP/1.1 101 %b\r\n" % PHRASES[101].encode()]
            lines.extend(
                b"%b: %b\r\n" % (name, value)
                for name, value in self._headers
                if name.lower() != b"set-cookie" or not sets_gateway_cookie(value)
            )
            lines.append(b"\r\n")
            exchange.streaming = True
            exchange.send_head(101, b"".join(lines))
            return
        head, chunked, keep_alive = client_head(
            status,
            self._headers,
            request_id=exchange.request_id,
            method=exchange.method,
            http11=exchange.http11,
            keep_alive=exchange.keep_alive and not exchange.upgrade,
        )
        if chunked or not keep_alive:  # the client gets no length: is there one at all?
            self._until_close = _delimited_by_close(status, exchange.method, self._headers)
        self._headers = []  # relayed: a watch would keep them for as long as it streams
        exchange.chunked_out = chunked
        exchange.keep_alive = keep_alive
        exchange.send_head(status, head)
        if exchange.streaming and exchange.body_done and not exchange.upgrade and self.flow:
            # answered, and nothing left to send or retry: what only the request needed
            # (its head as sent upstream, the client's header fields with its bearer
            # token) goes now instead of living as long as the watch
            self.flow.upstream_head = b""
            exchange.release_request_head()
            self._stop_timer()  # the head came: its deadline timer would linger for minutes
        if exchange.method == b"HEAD":
            # httptools cannot be told the request was HEAD: end here, never reuse
            self._detach()
            self.close()
            exchange.finish()

    def on_body(self, body: bytes) -> None:
        self._progress += 1
        if self.exchange is not None:
            self.exchange.send_body(body)

    def on_message_complete(self) -> None:
        self._progress += 1
        exchange = self.exchange
        if exchange is None or not self._responded:
            return
        if self._upgrade_expected and exchange.status == 101:
            return  # the tunnel starts when httptools raises HttpParserUpgrade
        reusable = self.parser.should_keep_alive() and self._request_sent and not self.closed
        self._detach()
        exchange.finish()
        if reusable:
            self.idle_since = time.monotonic()
            self.pool.release(self)
        else:
            self.close()

    def _stream_answer(self, status: int) -> bool:
        """An exec/attach/port-forward upgrade was answered: True when the stream session
        took the answer over (its own 101 for the client, or a retry with the other upgrade
        after a refusal); False to relay the answer as it is."""
        flow, exchange = self.flow, self.exchange
        assert flow is not None and flow.stream is not None and exchange is not None
        session = flow.stream
        if status != 101:
            head = session.retry_head(status, self._headers)
            if head is None:
                return False
            self._detach()
            self.close()
            flow.upstream_head = head
            self.pool.on_failure(
                self.pool,
                flow,
                Failure(f"upgrade refused ({status}), trying {session.attempt}", retry=True),
            )
            return True
        try:
            head = session.switched(self._headers, exchange.request_id)
        except UnusableSwitch as exc:
            self._detach()
            self.close()
            tenant = flow.tenant or "?"
            self.pool.on_failure(
                self.pool,
                flow,
                Failure(
                    f"unusable upgrade answer: {exc}",
                    502,
                    f"the API server of tenant {tenant} answered the {session.attempt} upgrade in "
                    f"a way the gateway cannot bridge: {exc}",
                ),
            )
            return True
        if head is None:
            return False
        exchange.streaming = True
        exchange.send_head(101, head)
        return True

    def _credential_rejected(self) -> None:
        """A 401 to a request the gateway impersonated (`failure.credential_rejected`)."""
        flow = self.flow
        assert flow is not None
        self._detach()
        self.close()
        self.pool.on_failure(self.pool, flow, credential_rejected(flow.tenant or "?"))

    # -- tunnel ---------------------------------------------------------------------------

    def _enter_tunnel(self, rest: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.status != 101:
            if self.transport is not None:
                self.transport.abort()
            return
        self._tunnel = True
        transport = self.transport
        assert transport is not None
        session = self.flow.stream if self.flow is not None else None
        relay = session.relay(self._ends(exchange, transport)) if session is not None else None
        if relay is not None:
            self._relay = relay
            relay.start()
            if rest:
                relay.from_tenant(rest)
            exchange.conn.start_tunnel(relay.from_client)
            return

        def from_client(data: bytes) -> None:
            transport.write(data)

        if rest:
            exchange.bytes_out += len(rest)
            exchange.conn.write(rest)
        exchange.conn.start_tunnel(from_client)

    def _ends(self, exchange: Exchange, transport: asyncio.Transport) -> Ends:
        """The two connections as a relay sees them."""
        conn, flow = exchange.conn, self.flow

        def to_client(data: bytes) -> None:
            exchange.bytes_out += len(data)
            conn.write(data)

        def end(why: str) -> None:
            if why and flow is not None:
                flow.reason = f"stream ended: {why}"
            if not self.closed:
                transport.close()  # then connection_lost closes the client's connection
            else:
                conn.close()
                exchange.finish(reusable=False)

        return Ends(to_client, transport.write, end)
