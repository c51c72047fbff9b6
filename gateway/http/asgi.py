"""A small, bounded ASGI bridge: serve mounted ASGI apps (portal, admin API) on an `Exchange`.

The gateway's own HTTP/1.1 layer stays in charge of the connection. A request whose path
falls under a mount prefix is handed to that app as an ASGI 3 `http` scope (spec 2.4):

- the request body is buffered up to `max_body_bytes` (413 above) and delivered as one
  `http.request` message; afterwards `receive()` waits for `http.disconnect`;
- `http.response.start` + `http.response.body` (with `more_body` for streaming) become a
  response with `Content-Length` when the whole body is known, else chunked;
- `send()` on a disconnected client raises `OSError` (spec 2.4), so streams end; it
  waits while the client's socket buffer is full (backpressure);
- an exception in the app is logged and answered with a plain 500 (no internals), or ends
  the connection when the response had already started. No lifespan protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from gateway.http.exchange import Exchange
from gateway.http.status import PHRASES

log = logging.getLogger("vgate.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1 << 20
_DROPPED_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"}
)


def _normalize_prefix(prefix: str) -> str:
    prefix = "/" + prefix.strip("/")
    return "" if prefix == "/" else prefix


#: where a mounted app names whom it served, in its scope's "state" (starlette:
#: `request.state`), once it has authenticated the caller: the bridge hands it to
#: `on_served` before the response starts, so the request's audit line names the user
SERVED_AS = "vgate_served_as"

#: called with the exchange and what the app put under `SERVED_AS`
OnServed = Callable[[Exchange, object], None]


class AsgiBridge:
    """A mount table (path prefix → ASGI app); the longest matching prefix wins."""

    def __init__(
        self, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, on_served: OnServed | None = None
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.on_served = on_served
        self._mounts: list[tuple[str, ASGIApp]] = []
        self._tasks: set[asyncio.Task] = set()
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def mount(
        self, prefix: str, app: ASGIApp, *, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Serve `app` for `prefix` and everything below it ("/" = every local path);
        `on_close` runs at shutdown (the bridge speaks no lifespan protocol)."""
        if on_close is not None:
            self._closers.append(on_close)
        norm = _normalize_prefix(prefix)
        self._mounts = [(p, a) for p, a in self._mounts if p != norm]
        self._mounts.append((norm, app))
        self._mounts.sort(key=lambda m: len(m[0]), reverse=True)

    def match(self, path: str) -> tuple[str, ASGIApp] | None:
        for prefix, app in self._mounts:
            if not prefix or path == prefix or path.startswith(prefix + "/"):
                return prefix, app
        return None

    def handle(self, exchange: Exchange) -> bool:
        """Start serving `exchange` if a mount matches its path; False when none does."""
        raw_path, _, query = exchange.target.partition(b"?")
        path = unquote(raw_path.decode("latin-1"), errors="replace")
        found = self.match(path)
        if found is None:
            return False
        if exchange.upgrade:
            exchange.fail(400, "upgrades are not supported on this path")
            return True
        if (exchange.content_length or 0) > self.max_body_bytes:
            exchange.keep_alive = False
            exchange.fail(413, "request body too large")
            return True
        prefix, app = found
        call = _Call(self, exchange, app, _scope(exchange, prefix, path, raw_path, query))
        task = asyncio.get_running_loop().create_task(call.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def close(self) -> None:
        """Cancel the requests still running (shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for closer in self._closers:
            try:
                await closer()
            except Exception:
                log.exception("closing a mounted application failed")


def _scope(exchange: Exchange, prefix: str, path: str, raw_path: bytes, query: bytes) -> Scope:
    transport = exchange.conn.transport
    sockname = transport.get_extra_info("sockname") if transport else None
    peername = transport.get_extra_info("peername") if transport else None
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1" if exchange.http11 else "1.0",
        "method": exchange.method.decode("latin-1"),
        "scheme": "https" if tls else "http",
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": prefix,
        "headers": [(n.lower(), v) for n, v in exchange.headers],
        "client": tuple(peername[:2]) if isinstance(peername, tuple) else None,
        "server": tuple(sockname[:2]) if isinstance(sockname, tuple) else None,
        "state": {},
    }


class _Call:
    """One ASGI request: body collection, receive/send, response framing."""

    def __init__(self, bridge: AsgiBridge, exchange: Exchange, app: ASGIApp, scope: Scope):
        self.bridge = bridge
        self.exchange = exchange
        self.app = app
        self.scope = scope
        self.body = bytearray()
        self.body_complete = asyncio.Event()
        self.too_large = False
        self.disconnected = asyncio.Event()
        self.writable = asyncio.Event()  # cleared while the client's socket buffer is full
        self.writable.set()
        self.request_delivered = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_sent = False
        self.ended = False
        self.chunked = False
        self.close_delimited = False
        exchange.client_gone_hook = self._client_gone
        exchange.conn.on_write_pause = self._write_paused
        exchange.continue_if_expected()
        exchange.attach_body_sink(self._body_chunk)

    # -- request side --------------------------------------------------------------------

    def _body_chunk(self, chunk: bytes | None) -> None:
        if chunk is None:
            self.body_complete.set()
            return
        if self.too_large:
            return
        if len(self.body) + len(chunk) > self.bridge.max_body_bytes:
            self.too_large = True
            self.body_complete.set()
            return
        self.body += chunk

    def _client_gone(self) -> None:
        self.disconnected.set()
        self.body_complete.set()
        self.writable.set()

    def _write_paused(self, paused: bool) -> None:
        if paused:
            self.writable.clear()
        else:
            self.writable.set()

    async def receive(self) -> Message:
        if not self.request_delivered and not self.disconnected.is_set():
            await self.body_complete.wait()
            if not self.disconnected.is_set():
                self.request_delivered = True
                return {"type": "http.request", "body": bytes(self.body), "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    # -- response side -------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.disconnected.is_set() or self.exchange.conn.closed:
            raise OSError("client disconnected")
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("http.response.start sent twice")
            self._report_served()
            self.status = int(message["status"])
            self.headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.status:
            raise RuntimeError("http.response.body before http.response.start")
        if self.ended:
            raise RuntimeError("http.response.body after the response ended")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.head_sent:
            self._send_head(len(body) if not more else None)
        if body and self.exchange.method != b"HEAD":
            self.exchange.send_body(body)
            if not self.writable.is_set():  # backpressure: a slow client slows the app
                await self.writable.wait()
                if self.disconnected.is_set():
                    raise OSError("client disconnected")
        if not more:
            self.ended = True
            self.exchange.finish(reusable=not self.close_delimited)

    def _send_head(self, known_length: int | None) -> None:
        ex = self.exchange
        has_length = any(n.lower() == b"content-length" for n, _ in self.headers)
        lines = [b"HTTP/1.1 %d %b\r\n" % (self.status, PHRASES.get(self.status, "OK").encode())]
        for name, value in self.headers:
            if name.lower() in _DROPPED_RESPONSE_HEADERS or b"\r" in value or b"\n" in value:
                continue
            lines.append(b"%b: %b\r\n" % (name, value))
        no_body = self.status in (204, 304) or self.status < 200
        if not has_length and not no_body:
            if known_length is not None:
                lines.append(b"Content-Length: %d\r\n" % known_length)
            elif ex.http11 and ex.method != b"HEAD":
                lines.append(b"Transfer-Encoding: chunked\r\n")
                self.chunked = True
            elif ex.method != b"HEAD":
                self.close_delimited = True
        if self.close_delimited or not ex.keep_alive or ex.conn.closing or not ex.body_done:
            lines.append(b"Connection: close\r\n")
            ex.keep_alive = False
        lines.append(b"\r\n")
        ex.send_head(self.status, b"".join(lines))
        ex.chunked_out = self.chunked
        self.head_sent = True

    # -- running -------------------------------------------------------------------------

    async def run(self) -> None:
        ex = self.exchange
        try:
            await self.body_complete.wait()
            if self.disconnected.is_set():
                return
            if self.too_large:
                ex.keep_alive = False
                ex.fail(413, "request body too large")
                return
            await self.app(self.scope, self.receive, self.send)
            if not self.ended and not ex.finished:
                if not self.status:
                    raise RuntimeError("the application returned without a response")
                if not self.head_sent:
                    self._send_head(0)
                self.ended = True
                ex.finish(reusable=False)
        except asyncio.CancelledError:
            if not ex.finished and not ex.conn.closed:
                ex.conn.abort()
            raise
        except OSError:
            if self.disconnected.is_set() or ex.conn.closed:
                return  # the client went away mid-response
            self._crashed()
        except Exception:
            self._crashed()
        finally:
            ex.client_gone_hook = None
            if ex.conn.on_write_pause == self._write_paused:
                ex.conn.on_write_pause = None

    def _report_served(self) -> None:
        """Hand whom the app served (`SERVED_AS`) to the bridge's `on_served`, once."""
        state = self.scope.get("state")
        served = state.pop(SERVED_AS, None) if isinstance(state, dict) else None
        if served is not None and self.bridge.on_served is not None:
            self.bridge.on_served(self.exchange, served)

    def _crashed(self) -> None:
        ex = self.exchange
        self._report_served()
        log.exception(
            "mounted application failed on %s %s",
            ex.method.decode("latin-1"),
            self.scope["path"][:200],
        )
        if ex.finished or ex.conn.closed:
            return
        if self.head_sent:
            ex.conn.abort()  # a half-sent response cannot be repaired
            return
        ex.keep_alive = False
        ex.respond(500, b"internal server error", content_type=b"text/plain; charset=utf-8")
