"""An ingress stand-in that refuses SPDY upgrades (a fault injector).

Many load balancers and ingresses pass WebSocket upgrades and drop SPDY/3.1 ones (cloud L7
load balancers, Envoy-based gateways without the upgrade configured). This one terminates
TLS, answers a SPDY upgrade with a plain-text 400 (no Kubernetes `Status`: it is not an
API server) and passes everything else on to its backend over TLS, byte for byte: the
request head unchanged except for `Connection: close` on plain requests, so every request
arrives on a connection of its own and is looked at. It can stand in front of the gateway
(clients must use WebSocket) or in front of a tenant (the gateway must).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.pki import Leaf

MAX_HEAD = 64 * 1024
REFUSAL_BODY = b"SPDY/3.1 upgrades are not supported by this ingress\n"


class SpdyRefusingIngress:
    """`start()` serves https://127.0.0.1:<port> in a thread; `refused` and `passed` list
    the request lines it refused and passed on."""

    def __init__(self, leaf: Leaf, backend_url: str, backend_ca: Path) -> None:
        self.leaf = leaf
        parts = urlsplit(backend_url)
        self.backend = (parts.hostname or "127.0.0.1", parts.port or 443)
        self.backend_tls = ssl.create_default_context(cafile=str(backend_ca))
        self.backend_tls.set_alpn_protocols(["http/1.1"])
        self.refused: list[bytes] = []
        self.passed: list[bytes] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="ingress-stand-in"
        )
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> SpdyRefusingIngress:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(self.leaf.cert_file), str(self.leaf.key_file))
        tls.set_alpn_protocols(["http/1.1"])
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.url = f"https://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer)
        except (
            ConnectionError,
            ssl.SSLError,
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return
        lines = head[:-4].split(b"\r\n")
        fields = [line.split(b":", 1) for line in lines[1:] if b":" in line]
        upgrade = b",".join(v.strip().lower() for n, v in fields if n.strip().lower() == b"upgrade")
        if b"spdy" in upgrade:
            self.refused.append(lines[0])
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%b"
                % (len(REFUSAL_BODY), REFUSAL_BODY)
            )
            await writer.drain()
            return
        self.passed.append(lines[0])
        if not upgrade:
            kept = [
                line
                for line in lines
                if not line.lower().startswith((b"connection:", b"keep-alive:"))
            ]
            head = b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"
        up_reader, up_writer = await asyncio.open_connection(
            *self.backend, ssl=self.backend_tls, server_hostname=self.backend[0]
        )
        up_writer.write(head)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            with contextlib.suppress(Exception):
                up_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
