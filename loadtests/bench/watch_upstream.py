"""A watch-capable API server stand-in for the bench (not a kube-apiserver: just fast).

`python -m loadtests.bench.watch_upstream [--period S] [--bookmark-period S]
[--burst-period S] [--host 127.0.0.x] [--tls-cert F --tls-key F]` listens on `host`
(default 127.0.0.1; an ephemeral port, printed as the first stdout line), with TLS when given
a certificate (as a kube-apiserver does). With TLS it offers ALPN `h2` and `http/1.1`, as a
kube-apiserver does: a connection that picks `h2` is served over HTTP/2 (`watch_h2`: many
watches as streams of one connection, each event one DATA frame), any other over HTTP/1.1
(each event one chunk); `--no-h2` offers `http/1.1` only. `GET …?watch=true` (or `watch=1`)
gets a JSON watch stream, in one of two groups:

- spread (the default): every watch receives one MODIFIED event every `period` seconds and
  one BOOKMARK every `bookmark-period` seconds, spread evenly over time (what a fleet of
  controllers sees on a steadily changing cluster);
- burst (the target also has ``bench-burst=1``): every `burst-period` seconds one MODIFIED event
  goes to every watch of the group at once, written back to back (a change that fans out
  to every watcher at the same moment).

Every event carries the CLOCK_MONOTONIC time it was written, so clients can compute delivery
latency, and its number on that watch (`bench.vgate.io/seq`, 1, 2, …), so they can tell
whether any was lost. SIGUSR1 pauses the events, the next SIGUSR1 resumes them, and each
prints `SENT <n>` (events written so far): with the clients' counts, nothing lost at the end
either. Any other request gets a ~2 KB PodList. Exits on SIGTERM or stdin EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
import time
from typing import Protocol

from loadtests.bench import procs, watch_h2
from loadtests.bench.stack import pod_list

MAX_HEAD = 65536


class Watch(Protocol):
    """One open watch, whatever carries it: its events are numbered `seq` = 1, 2, …"""

    seq: int

    @property
    def open(self) -> bool:
        """Whether an event written now can still reach the client."""
        ...

    def deliver(self, event: bytes) -> None:
        """Write one event (a JSON line) to the client."""
        ...


class Watchers:
    """Open watch streams: the spread group visited round-robin, the burst group all at once."""

    def __init__(self, period: float, bookmark_period: float, burst_period: float) -> None:
        self.period = period
        self.bookmark_period = bookmark_period
        self.burst_period = burst_period
        self.streams: dict[int, Watch] = {}  # spread group
        self.burst: dict[int, Watch] = {}
        self.next_id = 0
        self.rv = 1000
        self.sent = 0  # events written, all watches
        self.paused = False

    def toggle(self) -> None:
        """Pause or resume the events; print `SENT <n>` either way."""
        self.paused = not self.paused
        print(f"SENT {self.sent}", flush=True)

    def add(self, watch: Watch, *, burst: bool) -> int:
        """Register an open watch; its id (for `remove`)."""
        self.next_id += 1
        (self.burst if burst else self.streams)[self.next_id] = watch
        return self.next_id

    def remove(self, watch_id: int) -> None:
        self.streams.pop(watch_id, None)
        self.burst.pop(watch_id, None)

    def send(self, watch: Watch, kind: bytes = b"MODIFIED") -> None:
        """Write one event (`kind`) to `watch`, numbered on that watch."""
        if not watch.open:
            return
        self.rv += 1
        self.sent += 1
        watch.seq += 1
        if kind == b"BOOKMARK":
            body = (
                b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":'
                b'{"resourceVersion":"%d","annotations":{"bench.vgate.io/sent-ns":"%d",'
                b'"bench.vgate.io/seq":"%d"}}}}\n' % (self.rv, time.monotonic_ns(), watch.seq)
            )
        else:
            body = (
                b'{"type":"MODIFIED","object":{"kind":"Pod","apiVersion":"v1","metadata":'
                b'{"name":"web-0","namespace":"default","resourceVersion":"%d",'
                b'"annotations":{"bench.vgate.io/sent-ns":"%d","bench.vgate.io/seq":"%d"}},'
                b'"status":{"phase":"Running"}}}\n' % (self.rv, time.monotonic_ns(), watch.seq)
            )
        watch.deliver(body)

    async def run(self) -> None:
        tick = 0.01  # fine-grained, so spread events do not arrive in large bursts
        cursors = {b"MODIFIED": 0, b"BOOKMARK": 0}
        periods = {b"MODIFIED": self.period, b"BOOKMARK": self.bookmark_period}
        next_burst = time.monotonic() + self.burst_period
        while True:
            await asyncio.sleep(tick)
            if self.paused:
                continue
            if self.burst and time.monotonic() >= next_burst:
                next_burst = max(next_burst + self.burst_period, time.monotonic())
                for watch in list(self.burst.values()):
                    self.send(watch)
            ids = list(self.streams)
            if not ids:
                continue
            for kind, period in periods.items():
                share = max(1, round(len(ids) * tick / period))
                cursor = cursors[kind]
                for i in range(share):
                    spread = self.streams.get(ids[(cursor + i) % len(ids)])
                    if spread is not None:
                        self.send(spread, kind)
                cursors[kind] = (cursor + share) % len(ids)


class Handler(asyncio.Protocol):
    """An HTTP/1.1 connection (one watch at most); hands a TLS connection that negotiated
    `h2` to `watch_h2.H2Handler`."""

    def __init__(self, watchers: Watchers, body: bytes, max_streams: int) -> None:
        self.watchers = watchers
        self.body = body
        self.max_streams = max_streams
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.watch_id: int | None = None
        self.seq = 0  # events written to this watch

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def deliver(self, event: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"%x\r\n%b\r\n" % (len(event), event))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            h2 = watch_h2.H2Handler(self.watchers, self.body, self.max_streams)
            transport.set_protocol(h2)
            h2.connection_made(transport)
            return
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.watch_id is not None:
            self.watchers.remove(self.watch_id)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.watch_id is not None:
            return
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            parts = line.split(b" ")
            if len(parts) != 3:
                self.transport.close()
                return
            target = parts[1]
            if b"watch=true" in target or b"watch=1" in target:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Cache-Control: no-cache, private\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                self.watch_id = self.watchers.add(self, burst=b"bench-burst=1" in target)
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Cache-Control: no-cache, private\r\nContent-Length: %d\r\n\r\n%b"
                % (len(self.body), self.body)
            )
        if len(self.buf) > MAX_HEAD:
            self.transport.close()


async def serve(
    period: float,
    bookmark_period: float,
    burst_period: float,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    max_streams: int = watch_h2.MAX_STREAMS,
) -> None:
    loop = asyncio.get_running_loop()
    watchers = Watchers(period, bookmark_period, burst_period)
    body = pod_list()
    server = await loop.create_server(
        lambda: Handler(watchers, body, max_streams), host, 0, backlog=4096, ssl=tls
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, watchers.toggle)
    print(server.sockets[0].getsockname()[1], flush=True)  # ready, signals included
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    ticker = loop.create_task(watchers.run())
    await stop.wait()
    ticker.cancel()
    server.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--period", type=float, default=5.0, help="seconds between events per watch")
    p.add_argument(
        "--bookmark-period",
        type=float,
        default=15.0,
        help="seconds between bookmarks per watch (spread group)",
    )
    p.add_argument(
        "--burst-period",
        type=float,
        default=2.0,
        help="seconds between bursts (burst group: every watch at once)",
    )
    p.add_argument("--host", default="127.0.0.1", help="a loopback address to listen on")
    p.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", help="… and this key")
    p.add_argument(
        "--no-h2", action="store_true", help="offer ALPN http/1.1 only (no HTTP/2 over TLS)"
    )
    p.add_argument(
        "--h2-max-streams",
        type=int,
        default=watch_h2.MAX_STREAMS,
        help="SETTINGS_MAX_CONCURRENT_STREAMS advertised on HTTP/2 connections "
        f"(default {watch_h2.MAX_STREAMS}, a kube-apiserver's)",
    )
    args = p.parse_args()
    if not args.host.startswith("127."):
        p.error("--host must be a loopback address (127.x.y.z)")
    if args.h2_max_streams < 1:
        p.error("--h2-max-streams must be at least 1")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        tls.set_alpn_protocols(["http/1.1"] if args.no_h2 else ["h2", "http/1.1"])
    procs.raise_nofile()
    run_loop(
        serve(
            args.period,
            args.bookmark_period,
            args.burst_period,
            args.host,
            tls,
            args.h2_max_streams,
        )
    )


def run_loop(coro) -> object:
    """Run on uvloop when it is installed (it is a vgate dependency on Linux)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    main()
