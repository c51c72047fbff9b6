"""FakeKube: the HTTP/1.1 front (h11 over asyncio streams) of the fake API server."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import ssl
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import h11

from .api import Api, Outcome
from .model import Caller, EffectiveUser, Record, status_body
from .rbac import RULES, Rule
from .streams import ALL_TRANSPORTS, StreamRequest, serve_stream
from .web import Request, Response, Stream, Upgrade, json_response

if TYPE_CHECKING:
    from ..support.pki import Leaf

MAX_BODY = 8 * 1024 * 1024
FLOWSCHEMA_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "fakekube/flowschema"))
PRIORITY_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "fakekube/prioritylevel"))
_NET_ERRORS = (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError)


class _TooLarge(Exception):
    pass


def _canonical(name: str) -> str:
    """Go's CanonicalMIMEHeaderKey: `audit-id` -> `Audit-Id`."""
    return "-".join(p[:1].upper() + p[1:].lower() for p in name.split("-"))


def _accepts_gzip(req: Request) -> bool:
    for part in (req.header("accept-encoding") or "").split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() == "gzip" and params.replace(" ", "") not in ("q=0", "q=0.0"):
            return True
    return False


class FakeKube:
    """A kube-apiserver stand-in on 127.0.0.1 (HTTPS with `tls`, else plain HTTP).

    Use `start()`/`stop()` (own thread and event loop) or `with FakeKube(...) as kube:`.
    """

    def __init__(
        self,
        *,
        name: str = "fake",
        tokens: Mapping[str, Caller],
        tls: Leaf | None = None,
        rules: Mapping[str, tuple[Rule, ...]] = RULES,
        port: int = 0,
        gzip_threshold: int = 128,
        bookmark_interval: float = 1.0,
        log_interval: float = 0.1,
        stream_transports: frozenset[str] = ALL_TRANSPORTS,
    ) -> None:
        self.name = name
        self.tls = tls
        self.port = port
        self.gzip_threshold = gzip_threshold
        self.api = Api(tokens, rules, bookmark_interval, log_interval)
        # the upgrades its kubelet takes for exec/attach/port-forward: {"spdy"} is a tenant
        # whose kubelet predates WebSocket streams (it refuses them with a bare 403)
        self.stream_transports = stream_transports
        self.records: list[Record] = []
        self.url = ""
        self._records_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()

    # ----- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> FakeKube:
        """Listen in a daemon thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as e:  # surfaced to start()'s caller
                failure.append(e)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fakekube-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _listen(self) -> None:
        ctx = None
        if self.tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(self.tls.cert_file), str(self.tls.key_file))
            ctx.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if ctx else 'http'}://127.0.0.1:{self.port}"
        self.api.server_address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Close the listener and every open connection (watches and streams end)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._conns)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # ----- what tests read and change ----------------------------------------------------

    @property
    def active_watches(self) -> int:
        """Watch streams currently being served."""
        return self.api.active_watches

    @property
    def active_log_follows(self) -> int:
        """`logs?follow=true` streams currently being served."""
        return self.api.active_log_follows

    def clear_records(self) -> None:
        with self._records_lock:
            self.records.clear()

    def _record(self, rec: Record) -> None:
        with self._records_lock:
            self.records.append(rec)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the server's loop (directly if not started) and return it."""
        loop = self._loop
        if loop is None or not loop.is_running() or self._on_loop():
            return fn(*args)

        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), loop).result(10)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (watchers see it). Returns it as stored."""
        return self.call(self.api.put, obj)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str = "default"
    ) -> dict[str, Any] | None:
        """The stored object, or None."""
        return self.call(self.api.get, api_version, kind, name, namespace)

    # ----- one connection ----------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        handed_over = False
        try:
            while True:
                try:
                    req = await self._read(conn, reader, writer)
                except _TooLarge:
                    body = status_body(
                        413,
                        "RequestEntityTooLarge",
                        f"Request entity too large: limit is {MAX_BODY}",
                    )
                    await self._send_plain(conn, writer, json_response(body, 413))
                    return
                if req is None:
                    return
                outcome = await self.api.handle(req)
                if isinstance(outcome.result, Upgrade):
                    handed_over = True
                    await self._upgrade(req, outcome, conn, reader, writer)
                    return
                if not await self._respond(conn, req, outcome, reader, writer):
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (*_NET_ERRORS, h11.ProtocolError):
            pass
        finally:
            self._conns.discard(task)
            if not handed_over:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _read(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError:
                return None
            if ev is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                conn.receive_data(await reader.read(65536))
            elif isinstance(ev, h11.Request):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
                if len(body) > MAX_BODY:
                    raise _TooLarge
            elif isinstance(ev, h11.EndOfMessage) and head is not None:
                return Request.build(
                    head.method.decode(),
                    bytes(head.target),
                    list(head.headers.raw_items()),
                    bytes(body),
                )
            else:  # ConnectionClosed, PAUSED
                return None

    def _headers(
        self, req: Request, resp: Response | Stream, identity: EffectiveUser | None
    ) -> list[tuple[str, str]]:
        audit = req.header("audit-id") or str(uuid.uuid4())
        hs = [
            ("Audit-Id", audit),
            ("Cache-Control", "no-cache, private"),
            ("Content-Type", resp.content_type),
            ("Date", email.utils.formatdate(usegmt=True)),
        ]
        hs += [(_canonical(k), v) for k, v in resp.headers]
        if identity is not None:
            hs += [
                ("X-Kubernetes-Pf-Flowschema-Uid", FLOWSCHEMA_UID),
                ("X-Kubernetes-Pf-Prioritylevel-Uid", PRIORITY_UID),
            ]
        return sorted(hs, key=lambda kv: kv[0])  # Go writes headers sorted by name

    async def _send_plain(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        resp: Response,
        headers: list[tuple[str, str]] | None = None,
        head_only: bool = False,
    ) -> None:
        hs = list(headers if headers is not None else [("Content-Type", resp.content_type)])
        if resp.status != 304:
            hs.append(("Content-Length", str(len(resp.body))))
        writer.write(conn.send(h11.Response(status_code=resp.status, headers=hs)))
        if resp.body and not head_only and resp.status != 304:
            writer.write(conn.send(h11.Data(data=resp.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()

    async def _respond(
        self,
        conn: h11.Connection,
        req: Request,
        outcome: Outcome,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Send the answer; False when the connection must close."""
        resp = outcome.result
        assert isinstance(resp, Response | Stream)
        headers = self._headers(req, resp, outcome.identity)
        self._record(Record(req.method, req.target, req.raw_headers, outcome.identity, resp.status))
        if isinstance(resp, Stream):
            return await self._stream(conn, resp, headers, reader, writer)
        if len(resp.body) > self.gzip_threshold and _accepts_gzip(req):
            resp = Response(resp.status, gzip.compress(resp.body), resp.content_type)
            headers = sorted(
                [*headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")],
                key=lambda kv: kv[0],
            )
        await self._send_plain(conn, writer, resp, headers, head_only=req.method == "HEAD")
        return True

    async def _stream(
        self,
        conn: h11.Connection,
        resp: Stream,
        headers: list[tuple[str, str]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Chunked body until the producer ends (True) or the client goes away (False)."""

        async def pump() -> None:
            async for chunk in resp.chunks:
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()

        async def until_eof() -> None:
            with contextlib.suppress(*_NET_ERRORS):
                while data := await reader.read(65536):
                    conn.receive_data(data)

        try:
            writer.write(conn.send(h11.Response(status_code=resp.status, headers=headers)))
            await writer.drain()
            producer = asyncio.ensure_future(pump())
            eof = asyncio.ensure_future(until_eof())
            try:
                await asyncio.wait({producer, eof}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (producer, eof):
                    t.cancel()
                await asyncio.gather(producer, eof, return_exceptions=True)
            if producer.cancelled() or producer.exception() is not None:
                return False
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return True
        finally:
            if resp.cleanup is not None:
                resp.cleanup()
            aclose = getattr(resp.chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _upgrade(
        self,
        req: Request,
        outcome: Outcome,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Hand an exec/attach/portforward connection to the streams package (which does
        the 101 handshake and closes the writer)."""
        up = outcome.result
        assert isinstance(up, Upgrade)
        rec = Record(req.method, req.target, req.raw_headers, outcome.identity, 101)
        self._record(rec)
        leftover = bytes(conn.trailing_data[0])
        sreq = StreamRequest(
            kind=up.kind,
            namespace=up.namespace,
            pod=up.pod,
            query=list(req.query),
            headers=list(req.headers),
        )
        result = await serve_stream(
            sreq, reader, writer, leftover, transports=self.stream_transports
        )
        if isinstance(result, int):
            rec.status = result
