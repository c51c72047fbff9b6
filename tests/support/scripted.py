"""A fault-injection upstream (raw asyncio in its own thread) that records the exact request
heads that left the gateway and answers as each test scripts it."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable

Script = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future"]


class ScriptedUpstream:
    """Accepts connections on 127.0.0.1 (TLS with `tls`: a server context);
    `handler(head, reader, writer)` answers each request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.heads: list[bytes] = []
        self.open_streams = 0
        self.handler = self.default
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls), self.loop
        ).result()
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                keep = await self.handler(head, reader, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def default(head: bytes, reader, writer) -> bool:
        body = b'{"kind":"List","items":[]}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()
        return True

    def stop(self) -> None:
        """Close the server on its own loop (asyncio's Server is not thread-safe: closing it
        from the test's thread raced with a connection ending), then stop the loop."""

        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)


def server_context(cert_file, key_file) -> ssl.SSLContext:
    """A TLS server context for a scripted upstream (HTTP/1.1 only)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["http/1.1"])
    return context
