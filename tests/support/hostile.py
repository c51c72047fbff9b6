"""Hostile tenant API servers: scripted TLS upstreams that answer every request with a
response that never ends where it should. In the test process (`HOSTILE[mode]` as a
`ScriptedUpstream` handler), or in a process of its own so that its CPU use does not share
the test's interpreter:

    python -m tests.support.hostile MODE CERT KEY    # prints the port, serves until killed

    python -m tests.support.hostile client PORT PATH TOKEN CONCURRENCY PAUSE
        # requests PATH on the gateway at 127.0.0.1:PORT from CONCURRENCY connections, one
        # after the other on each with PAUSE seconds between, until stdin closes; then
        # prints the status counts

Modes:
  good             a short JSON answer (a well-behaved tenant)
  endless-value    a header value that never ends
  endless-lines    header lines that never end
  endless-trailer  a chunked body whose trailer never ends
  dribble          a response head one byte per 20 ms, never complete
  hang             reads the request, never answers
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading

from tests.support.scripted import ScriptedUpstream, server_context

PIECE = 16 * 1024


async def _endless(writer: asyncio.StreamWriter, first: bytes, piece: bytes) -> bool:
    writer.write(first)
    while not writer.is_closing():
        writer.write(piece)
        await writer.drain()  # raises once the gateway has cut the connection
        await asyncio.sleep(0)  # (drain does not yield while the buffer is low)
    return False


async def endless_value(head, reader, writer) -> bool:
    return await _endless(writer, b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * PIECE)


async def endless_lines(head, reader, writer) -> bool:
    line = b"X-Line: vvvvvvvv\r\n"
    return await _endless(writer, b"HTTP/1.1 200 OK\r\n", line * (PIECE // len(line)))


async def endless_trailer(head, reader, writer) -> bool:
    return await _endless(
        writer,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ",
        b"t" * PIECE,
    )


async def dribble(head, reader, writer) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while not writer.is_closing():
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"a")
    return False


async def hang(head, reader, writer) -> bool:
    await reader.read()  # until the gateway gives up and closes
    return False


HOSTILE = {
    "good": ScriptedUpstream.default,
    "endless-value": endless_value,
    "endless-lines": endless_lines,
    "endless-trailer": endless_trailer,
    "dribble": dribble,
    "hang": hang,
}


def _client(
    port: int, path: str, token: str, pause: float, counts: dict[str, int], stop: threading.Event
) -> None:
    """One connection's requests, one after the other; a response the gateway cuts (a
    stream it had begun) counts as "cut", and the next request goes on a new connection."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                reader = s.makefile("rb")
                while not stop.wait(pause):
                    s.sendall(request)
                    status = reader.readline().split()[1].decode()
                    length, close, chunked = 0, False, False
                    for line in iter(reader.readline, b"\r\n"):
                        name, _, value = line.partition(b":")
                        name = name.strip().lower()
                        length = int(value) if name == b"content-length" else length
                        close = close or (name == b"connection" and b"close" in value)
                        chunked = chunked or name == b"transfer-encoding"
                    if chunked:  # a stream: until the gateway ends or cuts it
                        with contextlib.suppress(OSError):
                            reader.read()
                        counts[status + " cut"] = counts.get(status + " cut", 0) + 1
                        break
                    reader.read(length)
                    counts[status] = counts.get(status, 0) + 1
                    if close:
                        break
        except (OSError, IndexError):
            counts["error"] = counts.get("error", 0) + 1


def client(argv: list[str]) -> None:
    port, path, token = int(argv[0]), argv[1], argv[2]
    concurrency, pause = int(argv[3]), float(argv[4])
    counts: dict[str, int] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client, args=(port, path, token, pause, counts, stop), daemon=True)
        for _ in range(concurrency)
    ]
    for t in threads:
        t.start()
    sys.stdin.read()
    stop.set()
    print(json.dumps(counts), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "client":
        client(argv[1:])
        return
    mode, cert, key = argv
    upstream = ScriptedUpstream(server_context(cert, key))
    upstream.handler = HOSTILE[mode]
    print(upstream.port, flush=True)
    sys.stdin.read()  # until the test closes our stdin (or ends)
    upstream.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
