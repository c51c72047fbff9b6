"""One request/response on a client connection."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.http.headers import RequestHeaders
from gateway.http.status import status_body, status_line

if TYPE_CHECKING:
    from gateway.http.connection import ClientConnection

Headers = list[tuple[bytes, bytes]]
# what a released exchange's `head` is: no fields, nothing classified (never added to),
# except whether the request asked for impersonation (a policy reload reads that of an
# open stream: `kubectl --as` streams end only when access is gone)
_RELEASED = RequestHeaders()
_RELEASED_IMPERSONATING = RequestHeaders()
_RELEASED_IMPERSONATING.impersonation = True


_ID_BATCH = 256
_spare_ids: list[bytes] = []
# a forked worker must not hand out the ids its parent had drawn
os.register_at_fork(after_in_child=_spare_ids.clear)


def new_request_id() -> bytes:
    """A random UUID-shaped id (used as Audit-ID and impersonated request-id extra).

    Drawn from the OS's random source in batches of `_ID_BATCH` (one system call and one
    hex conversion per batch instead of per request)."""
    if not _spare_ids:
        h = os.urandom(16 * _ID_BATCH).hex()
        _spare_ids.extend(
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-{h[i + 16 : i + 20]}-"
            f"{h[i + 20 : i + 32]}".encode()
            for i in range(0, len(h), 32)
        )
    return _spare_ids.pop()


class Exchange:
    """A parsed request head plus the state of its response.

    The request body arrives through `feed_body`; until a forwarder attaches a sink it is
    buffered (the connection stops reading past `BODY_BUFFER_LIMIT`). The response goes out
    through `send_head`/`send_body`/`finish`, or `respond` for a complete local answer.
    `context` belongs to the dispatcher (the pipeline keeps the request's `Flow` there).
    """

    __slots__ = (
        "body_buffer",
        "body_bytes",
        "body_done",
        "body_sink",
        "bytes_out",
        "chunked_in",
        "chunked_out",
        "client_gone_hook",
        "conn",
        "content_length",
        "context",
        "finished",
        "head",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "method",
        "request_id",
        "started",
        "status",
        "streaming",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        conn: ClientConnection,
        method: bytes,
        target: bytes,
        head: RequestHeaders,
        *,
        http11: bool,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.conn = conn
        self.method = method
        self.target = target
        self.head = head
        self.headers = head.fields
        self.http11 = http11
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.started = time.monotonic()
        self.request_id = new_request_id()
        self.host = head.host
        self.content_length = head.content_length
        self.chunked_in = head.chunked
        self.body_buffer: list[bytes] = []
        self.body_bytes = 0
        self.body_done = False
        self.body_sink: Callable[[bytes | None], None] | None = None
        self.client_gone_hook: Callable[[], object] | None = None
        self.status = 0
        self.bytes_out = 0
        self.chunked_out = False
        self.finished = False
        self.streaming = False
        self.context: object = None

    @property
    def body_pending(self) -> bool:
        """True while request body bytes may still arrive. A request without
        Content-Length or chunked framing has no body, so an answer given from the parser's
        headers-complete callback can keep the connection open."""
        return not self.body_done and bool(self.content_length or self.chunked_in)

    def release_request_head(self) -> None:
        """Let go of the request's header fields once nothing will read them again (a
        streaming response under way, the request body complete): an open watch then no
        longer holds the client's fields, its bearer token among them. `method`, `target`,
        `host`, the framing flags and whether it asked for impersonation stay (the audit
        line, the connection and a policy reload use them)."""
        released = _RELEASED_IMPERSONATING if self.head.impersonation else _RELEASED
        self.head = released
        self.headers = released.fields

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lowercase), or None. A scan: the hot path
        reads the fields `head` classified while parsing instead."""
        return self.head.get(name)

    # -- request body -------------------------------------------------------------------

    def feed_body(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        if self.body_sink is not None:
            self.body_sink(chunk)
        else:
            self.body_buffer.append(chunk)

    def end_body(self) -> None:
        self.body_done = True
        if self.body_sink is not None:
            self.body_sink(None)

    def continue_if_expected(self) -> None:
        """Send `100 Continue` when the client waits for it before sending its body: once
        the bytes that came with the head are parsed, and only if no body byte has come
        by then and no answer has begun (RFC 9110 §10.1.1: a server may omit it when the
        framing says there is no body or the body is arriving already). So the first head
        a client that sent its body at once reads is the answer, however soon the request
        was forwarded. Never to an HTTP/1.0 client, which cannot know an interim answer
        (RFC 9110 §10.1.1: a server ignores the expectation in an HTTP/1.0 request)."""
        if self.head.expect and self.body_pending and self.http11:
            self.conn.loop.call_soon(self._continue)

    def _continue(self) -> None:
        if self.status == 0 and not self.finished and self.body_bytes == 0 and not self.body_done:
            self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def attach_body_sink(self, sink: Callable[[bytes | None], None]) -> None:
        """Send buffered and future body chunks to `sink`; `None` marks the end."""
        self.body_sink = sink
        buffered, self.body_buffer = self.body_buffer, []
        for chunk in buffered:
            sink(chunk)
        if self.body_done:
            sink(None)

    # -- response -----------------------------------------------------------------------

    def send_head(self, status: int, head: bytes) -> None:
        """Write a complete response head (status line through the blank line)."""
        self.status = status
        self.conn.write(head)

    def send_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.chunked_out:
            self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)

    def finish(self, *, reusable: bool = True) -> None:
        """The response is complete; the connection may carry the next request."""
        if self.finished:
            return
        if self.chunked_out:
            self.conn.write(b"0\r\n\r\n")
        self.finished = True
        self.conn.exchange_finished(self, reusable=reusable)

    def respond(
        self,
        status: int,
        body: bytes,
        *,
        content_type: bytes = b"application/json",
        extra: Headers = (),  # type: ignore[assignment]
    ) -> None:
        """Answer locally with a complete response."""
        lines = [status_line(status)]
        lines.append(
            b"Content-Type: %b\r\nContent-Length: %d\r\nAudit-ID: %b\r\n"
            % (content_type, len(body), self.request_id)
        )
        lines.append(b"Cache-Control: no-cache, private\r\n")
        lines.extend(b"%b: %b\r\n" % (n, v) for n, v in extra)
        if not self.keep_alive or self.conn.closing or self.body_pending or self.upgrade:
            lines.append(b"Connection: close\r\n")
            self.keep_alive = False
        lines.append(b"\r\n")
        self.conn.cork()  # head and body in one write
        self.send_head(status, b"".join(lines))
        if self.method != b"HEAD":
            self.send_body(body)
        self.conn.uncork()
        self.finish(reusable=self.keep_alive)

    def fail(
        self,
        status: int,
        message: str,
        *,
        extra: Headers = (),  # type: ignore[assignment]
        details: dict | None = None,
    ) -> None:
        """Answer with a Kubernetes `Status` error."""
        self.respond(status, status_body(status, message, details=details), extra=extra)
