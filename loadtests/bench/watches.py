"""Concurrent watches: RSS per open watch and event delivery latency, vgate vs nginx, and
short-request latency with watches open vs idle. Each count gets freshly started proxies
(a process keeps memory it once used, so reusing one would flatter the next count).

Two event patterns (see `watch_upstream`): *spread* — each watch an event every
`EVENT_PERIOD` s and a bookmark every `BOOKMARK_PERIOD` s, evenly spread over time (a
controller fleet on a steadily changing cluster), measured at every count; and *burst* —
one event to every watch at the same moment, every `BURST_PERIOD` s, measured at the count
used for the short-request figure (5k)."""

from __future__ import annotations

import json
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loadtests.bench import procs, stack, wrk
from loadtests.bench.issuer import LocalIssuer

WATCH_PATH = "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1000"
BURST_QUERY = "&bench-burst=1"
EVENT_PERIOD = 5.0  # seconds between events on each watch (spread)
BOOKMARK_PERIOD = 15.0  # seconds between bookmarks on each watch (spread)
BURST_PERIOD = 2.0  # seconds between bursts (one event to every watch at once)
SHORT_RATE = 1000  # req/s of short requests measured idle and with watches open
SETTLE = 2.0


def _python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _start_upstream(
    work: Path,
    period: float,
    bookmark_period: float,
    burst_period: float,
    extra: tuple[str, ...] | list[str] = (),
) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        _python(
            "loadtests.bench.watch_upstream",
            "--period",
            str(period),
            "--bookmark-period",
            str(bookmark_period),
            "--burst-period",
            str(burst_period),
            *extra,
        ),
        cwd=stack.REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(work / "watch-upstream.log", "ab"),  # noqa: SIM115
        preexec_fn=procs.preexec(procs.load_cpu()),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else b""
    if not line.strip().isdigit():
        procs.stop(proc)
        raise RuntimeError("the watch upstream did not start")
    return proc, int(line)


def _short(url: str, token: str | None, seconds: float) -> dict:
    conns = max(2, SHORT_RATE // 100)
    r = wrk.run(url, seconds=seconds, connections=conns, token=token, pace_ms=10)
    return {
        "rps": r.rps,
        "p50_ms": r.p50_us / 1000,
        "p99_ms": r.p99_us / 1000,
        "errors": r.errors + r.non_2xx,
    }


def open_watches(args: list[str], work: Path, *, timeout: float = 180) -> subprocess.Popen:
    """Start `watch_client` with `args`, pinned to the load core, and return once it says
    its watches are open (RuntimeError, the client stopped, when it does not)."""
    client = subprocess.Popen(
        _python("loadtests.bench.watch_client", *args),
        cwd=stack.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=open(work / "watch-client.log", "ab"),  # noqa: SIM115
        preexec_fn=procs.preexec(procs.load_cpu()),
    )
    assert client.stdout is not None
    ready, _, _ = select.select([client.stdout], [], [], timeout)
    line = client.stdout.readline().decode() if ready else ""
    if not line.startswith("OPEN"):
        procs.stop(client)
        raise RuntimeError(f"watch client failed before opening its watches: {line!r}")
    return client


def _hold_watches(
    port: int,
    path: str,
    n: int,
    token: str | None,
    pids: list[int],
    during: Callable[[], None] | None,
    hold: float,
    settle: float,
    work: Path,
) -> dict:
    rss_before = procs.rss_bytes(pids)
    args = [
        "--port",
        str(port),
        "--path",
        path,
        "--n",
        str(n),
        "--hold",
        str(hold),
        "--window",
        str(settle),
    ]
    if token:
        args += ["--token", token]
    client = open_watches(args, work)
    try:
        cpu_open = procs.cpu_seconds(pids)
        time.sleep(settle)  # relaying events only: the proxy's CPU per event
        cpu_settle = procs.cpu_seconds(pids) - cpu_open
        rss_open = procs.rss_bytes(pids)
        if during is not None:
            during()
        out, _ = client.communicate(timeout=hold + 120)
    finally:
        procs.stop(client)
    result = json.loads(out.decode().strip().splitlines()[-1])
    result.update(
        rss_before=rss_before,
        rss_open=rss_open,
        kb_per_watch=(rss_open - rss_before) / max(result["open"], 1) / 1024,
        # CPU time comes in 10 ms ticks: too few events say nothing
        cpu_us_per_event=(
            cpu_settle / result["window_events"] * 1e6 if result["window_events"] >= 2000 else None
        ),
    )
    return result


def fd_capped(n: int) -> int:
    """A proxy holds two descriptors per watch (client and upstream side); stay within the
    hard RLIMIT_NOFILE that this machine allows (only it can be raised to)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return n
    return min(n, (min(hard, procs.NOFILE) - 200) // 2)


def run(
    work: Path,
    counts: list[int],
    *,
    seconds: float,
    smoke: bool,
    log: Callable[[str], None] = print,
) -> dict:
    capped = [fd_capped(n) for n in counts]
    for want, got in zip(counts, capped, strict=True):
        if got < want:
            log(
                f"  {want} watches need {2 * want + 200} descriptors per proxy; the hard "
                f"RLIMIT_NOFILE here allows {got}: measuring {got}"
            )
    counts = capped
    short_n = 5000 if 5000 in counts else max(counts)
    period, settle = (1.0, 0.5) if smoke else (EVENT_PERIOD, SETTLE)
    bookmark_period, burst_period = (1.0, 0.5) if smoke else (BOOKMARK_PERIOD, BURST_PERIOD)
    short_s = max(1.0 if smoke else 2.0, min(seconds, 6.0))
    hold = settle + period + 1 + short_s
    port = procs.free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    docs = stack.static_upstream(work, issuer, procs.load_cpu(), port).start()
    token = issuer.token(7)
    upstream, up_port = _start_upstream(work, period, bookmark_period, burst_period)
    runs: list[dict] = []
    short: list[dict] = []
    try:
        for n in counts:
            proxy = stack.nginx_proxy(work, up_port, procs.proxy_cpu()).start()
            gate = stack.Vgate(
                work, issuer.issuer, up_port, procs.proxy_cpu(), name=f"vgate-watch-{n}"
            ).start()
            try:
                for name, base, tok, pids in (
                    ("nginx", f"http://127.0.0.1:{proxy.port}", None, proxy.pids),
                    ("vgate", gate.base, token, gate.pids),
                ):
                    short_url = base + stack.LIST_PATH
                    if not smoke:
                        wrk.run(short_url, seconds=1, connections=10, token=tok)  # warm up
                    port_of = proxy.port if name == "nginx" else gate.port
                    prefix = base.split(str(port_of), 1)[1]
                    patterns = ["spread", "burst"] if n == short_n else ["spread"]
                    if n == short_n:
                        idle = _short(short_url, tok, short_s)
                        short.append({"proxy": name, "n": 0, "pattern": "none", **idle})
                    for events in patterns:
                        during = None
                        if n == short_n:

                            def during(
                                url=short_url, tok=tok, name=name, n=n, events=events
                            ) -> None:
                                short.append(
                                    {
                                        "proxy": name,
                                        "n": n,
                                        "pattern": events,
                                        **_short(url, tok, short_s),
                                    }
                                )

                        path = prefix + WATCH_PATH + (BURST_QUERY if events == "burst" else "")
                        r = _hold_watches(port_of, path, n, tok, pids, during, hold, settle, work)
                        r["proxy"], r["pattern"] = name, events
                        runs.append(r)
                        log(
                            f"  {name:<6} {r['open']:>6}/{n} watches ({events}) open in "
                            f"{r['open_s']:.1f}s: {r['kb_per_watch']:.1f} KB/watch, "
                            f"{r['events']} events, p50 {r['event_p50_ms']:.2f} ms, p99 "
                            f"{r['event_p99_ms']:.2f} ms, errors {r['errors']} "
                            f"{r['first_error']} load {procs.load_average()}"
                        )
                        time.sleep(0.2 if smoke else 1.0)
            finally:
                gate.stop()
                proxy.stop()
    finally:
        procs.stop(upstream)
        docs.stop()
    return {
        "runs": runs,
        "short": short,
        "event_period_s": period,
        "bookmark_period_s": bookmark_period,
        "burst_period_s": burst_period,
        "short_rate": SHORT_RATE,
        "short_seconds": short_s,
    }
