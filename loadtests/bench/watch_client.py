"""Open N concurrent watches through a proxy, hold them, measure event delivery latency.

`python -m loadtests.bench.watch_client --port P --path /…?watch=true --n N --hold S
[--token T] [--window W] [--tls] [--target HOST:PORT/PATH …] [--source 127.0.0.x]
[--until-eof]` prints `OPEN <n>` once every watch has its response head, keeps reading for
`hold` seconds (with `--until-eof`: until its stdin closes, at most `hold` seconds), then
prints one JSON line with the results and exits (closing all). `window_events` counts the
events that arrived in the first `W` seconds after OPEN (the bench measures the proxy's
CPU over the same seconds).

With `--target` (repeatable) the watches go round-robin to those addresses and paths
instead of `--port`/`--path`; with `--source` every connection is bound to that loopback
address first (so that several clients spread over several source addresses, each with
its own ephemeral ports). Events carry a number per watch: `gaps` counts numbers that never
arrived, `received` every event that did (from the first), `silent` the watches that
received nothing while held.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time

from loadtests.bench import procs
from loadtests.bench.watch_upstream import run_loop

_SENT = re.compile(rb'"bench\.vgate\.io/sent-ns":"(\d+)"(?:,"bench\.vgate\.io/seq":"(\d+)")?')


class Watch(asyncio.Protocol):
    def __init__(self, stats: Stats, request: bytes) -> None:
        self.stats = stats
        self.request = request
        self.head_seen = False
        self.buf = b""
        self.opened = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.seq = 0  # the last event number seen on this watch
        self.events = 0  # events received while held

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if not self.head_seen:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            head, _, data = self.buf.partition(b"\r\n\r\n")
            self.buf = b""
            self.head_seen = True
            if not head.startswith(b"HTTP/1.1 200"):
                self.stats.errors += 1
                self.stats.first_error = self.stats.first_error or head[:200].decode("latin-1")
                self.opened.set_result(False)
                if self.transport:
                    self.transport.close()
                return
            self.opened.set_result(True)
        stats = self.stats
        before = len(stats.latencies)
        for m in _SENT.finditer(data):  # events are small: one per chunk, never split here
            stats.latencies.append(now - int(m.group(1)))
            if m.group(2) is not None:
                seq = int(m.group(2))
                if seq > self.seq + 1:
                    stats.gaps += seq - self.seq - 1
                self.seq = seq
        got = len(stats.latencies) - before
        stats.received += got
        if stats.holding:
            self.events += got
        if now <= self.stats.window_end:
            self.stats.window_events += len(self.stats.latencies) - before

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.stats.errors += 1
            self.stats.first_error = self.stats.first_error or f"closed before head: {exc}"
            self.opened.set_result(False)
        elif self.stats.holding:
            self.stats.errors += 1
            self.stats.first_error = self.stats.first_error or f"watch ended early: {exc}"


class Stats:
    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.window_end = 0  # monotonic ns
        self.window_events = 0
        self.errors = 0
        self.first_error = ""
        self.holding = False
        self.gaps = 0  # event numbers that never arrived
        self.received = 0  # events, from the first (`latencies` restarts at OPEN)


async def run(args: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stats = Stats()
    auth = f"Authorization: Bearer {args.token}\r\n" if args.token else ""
    targets = [_target(t) for t in args.target] or [("127.0.0.1", args.port, args.path)]
    requests = [
        (
            host,
            port,
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Accept: application/json\r\n{auth}\r\n"
            ).encode(),
        )
        for host, port, path in targets
    ]
    local = (args.source, 0) if args.source else None
    watches: list[Watch] = []
    gate = asyncio.Semaphore(args.concurrency)
    tls = None
    if args.tls:  # the bench's own servers on loopback: encrypted, not authenticated
        import ssl

        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()

    async def open_one(i: int) -> None:
        host, port, request = requests[i % len(requests)]
        async with gate:
            try:
                _, w = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: Watch(stats, request), host, port, ssl=tls, local_addr=local
                    ),
                    30,
                )
            except (OSError, TimeoutError) as exc:
                stats.errors += 1
                stats.first_error = stats.first_error or f"connect: {exc}"
                return
            watches.append(w)
            try:
                await asyncio.wait_for(asyncio.shield(w.opened), 30)
            except TimeoutError:
                stats.errors += 1
                stats.first_error = stats.first_error or "no response head within 30 s"

    await asyncio.gather(*(open_one(i) for i in range(args.n)))
    open_s = time.monotonic() - t0
    opened = sum(1 for w in watches if w.opened.done() and w.opened.result())
    print(f"OPEN {opened}", flush=True)
    stats.holding = True
    stats.latencies.clear()
    stats.window_end = time.monotonic_ns() + int(args.window * 1e9)
    if args.until_eof:
        eof = loop.create_future()

        def readable() -> None:
            if not sys.stdin.buffer.raw.read(1024) and not eof.done():
                eof.set_result(None)

        loop.add_reader(sys.stdin.fileno(), readable)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(eof, args.hold)
        loop.remove_reader(sys.stdin.fileno())
    else:
        await asyncio.sleep(args.hold)
    stats.holding = False
    for w in watches:
        if w.transport is not None:
            w.transport.close()
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p))] / 1e6 if lat else 0.0

    return {
        "n": args.n,
        "open": opened,
        "open_s": open_s,
        "events": len(lat),
        "event_p50_ms": pct(0.50),
        "event_p99_ms": pct(0.99),
        "errors": stats.errors,
        "gaps": stats.gaps,
        "received": stats.received,
        "silent": sum(1 for w in watches if w.opened.done() and w.opened.result() and not w.events),
        "window_s": args.window,
        "window_events": stats.window_events,
        "first_error": stats.first_error,
    }


def _target(spec: str) -> tuple[str, int, str]:
    """`HOST:PORT/PATH` → (host, port, /path)."""
    address, slash, path = spec.partition("/")
    host, _, port = address.rpartition(":")
    return host, int(port), slash + path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--path", default="")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--token")
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--window", type=float, default=0.0)
    p.add_argument("--tls", action="store_true", help="connect with TLS (no certificate check)")
    p.add_argument(
        "--target", action="append", default=[], help="HOST:PORT/PATH, round-robin (repeatable)"
    )
    p.add_argument("--source", help="bind each connection to this loopback address first")
    p.add_argument(
        "--until-eof", action="store_true", help="hold until stdin closes (at most --hold s)"
    )
    args = p.parse_args()
    for host in [args.source or "127.0.0.1"] + [_target(t)[0] for t in args.target]:
        if not host.startswith("127."):
            p.error(f"{host}: the bench talks to loopback addresses (127.x.y.z) only")
    procs.raise_nofile()
    print(json.dumps(run_loop(run(args))), flush=True)


if __name__ == "__main__":
    main()
