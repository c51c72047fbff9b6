"""The bench's watch upstream (`python -m loadtests.bench.watch_upstream`, with TLS) speaks
HTTP/2 to a client that offers ALPN `h2` (watches as streams of one connection, as with a
kube-apiserver) and HTTP/1.1 to one that offers no ALPN (wrk, nginx's `proxy_ssl`), and its
`SENT` count is what the clients received."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.quickstart.pki import serving_certificate
from loadtests.bench import procs

REPO_ROOT = Path(__file__).resolve().parents[2]
WATCH = "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1000"
SEQ = re.compile(rb'"bench\.vgate\.io/seq":"(\d+)"')


@dataclass
class StandIn:
    proc: subprocess.Popen[bytes]
    port: int
    ca: Path

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    async def toggle(self) -> int:
        """Pause (or resume) the events: what the stand-in says it has written."""
        assert self.proc.stdout is not None
        os.kill(self.proc.pid, signal.SIGUSR1)
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 10)
        assert line.startswith(b"SENT "), line
        return int(line.split()[1])


def start(tmp_path: Path, *extra: str) -> StandIn:
    pki = serving_certificate(tmp_path / "pki", ["127.0.0.1", "localhost"])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtests.bench.watch_upstream",
            "--period",
            "0.2",
            "--bookmark-period",
            "0.5",
            "--tls-cert",
            str(pki.cert_file),
            "--tls-key",
            str(pki.key_file),
            *extra,
        ],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own process group, as `procs.stop` expects
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), line
    return StandIn(proc, int(line), pki.ca_file)


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    up = start(tmp_path)
    yield up
    procs.stop(up.proc)


def seqs(data: bytes) -> list[int]:
    return [int(m.group(1)) for m in SEQ.finditer(data)]


async def _read_h2(response: httpx.Response, into: bytearray) -> None:
    async for chunk in response.aiter_raw():
        into += chunk


async def _read(reader: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await reader.read(65536):
        into += chunk


async def test_watches_share_one_http2_connection_next_to_an_http1_watch(
    stand_in: StandIn,
) -> None:
    """Five watches and a list over one HTTP/2 connection, one HTTP/1.1 watch without ALPN;
    every watch gets events numbered 1, 2, … without a gap, and after the pause the
    stand-in's `SENT` equals what the six watches received."""
    me = [os.getpid()]
    peer = {("127.0.0.1", stand_in.port)}
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(http2=True, verify=stand_in.tls(), timeout=10)
        )
        streams = [
            await stack.enter_async_context(client.stream("GET", stand_in.base + WATCH))
            for _ in range(5)
        ]
        for r in streams:
            assert r.status_code == 200 and r.http_version == "HTTP/2"
            assert r.headers["content-type"] == "application/json"
        addrs = {r.extensions["network_stream"].get_extra_info("client_addr") for r in streams}
        assert len(addrs) == 1, addrs  # one connection (one local port) for all five
        listed = await client.get(stand_in.base + "/api/v1/namespaces/default/pods")
        assert listed.http_version == "HTTP/2" and listed.json()["kind"] == "PodList"
        assert len(listed.content) == int(listed.headers["content-length"])
        assert procs.connections_to(me, peer) == 1

        # HTTP/1.1 the way wrk and nginx's proxy_ssl come: TLS without ALPN
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", stand_in.port, ssl=stand_in.tls(), server_hostname="localhost"
        )
        stack.callback(writer.close)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        writer.write(f"GET {WATCH} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in head
        assert procs.connections_to(me, peer) == 2

        received = [bytearray() for _ in range(len(streams) + 1)]
        readers = [
            asyncio.create_task(_read_h2(r, into))
            for r, into in zip(streams, received, strict=False)
        ]
        readers.append(asyncio.create_task(_read(reader, received[-1])))
        await asyncio.sleep(1.5)
        sent = await stand_in.toggle()  # paused
        await asyncio.sleep(0.5)  # what is on its way arrives
        for task in readers:
            assert not task.done(), task  # no watch ended early
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    numbers = [seqs(bytes(data)) for data in received]
    for got in numbers:
        assert len(got) >= 3 and got == list(range(1, len(got) + 1)), got
    assert sum(map(len, numbers)) == sent


async def test_without_h2_an_http2_client_gets_http1(tmp_path: Path) -> None:
    """`--no-h2`: a client offering h2 falls back to HTTP/1.1 (one connection per watch)."""
    up = start(tmp_path, "--no-h2")
    try:
        async with (
            httpx.AsyncClient(http2=True, verify=up.tls(), timeout=10) as client,
            client.stream("GET", up.base + WATCH) as r,
        ):
            assert r.status_code == 200 and r.http_version == "HTTP/1.1"
            async for chunk in r.aiter_bytes():
                assert seqs(chunk) == [1]
                break
    finally:
        procs.stop(up.proc)
