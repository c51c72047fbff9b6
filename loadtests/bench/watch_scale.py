"""Watches at scale (issue 16 item 6): N watches (50,000 is the target) straight to the
upstream, through nginx with W worker processes and through vgate with `workers: W`, side by
side in one run, each proxy freshly started; TLS from the proxy to the upstream, as in
production. The client side is plain HTTP to the proxies (TLS to the upstream directly).

Laid out so that no process needs more descriptors than the hard `RLIMIT_NOFILE` allows
(a per-process limit; raising it needs `CAP_SYS_RESOURCE`) and no address pair runs out of
ephemeral ports, without touching host settings (`ip_local_port_range` is shared with
everything else on the machine):

- upstreams: one `watch_upstream` per `PER_PROCESS` watches, each serving TLS (an ECDSA
  P-256 certificate: cheap handshakes) on its own address 127.0.0.(`UPSTREAM_BASE` + k), one
  tenant each (`w0`, `w1`, …; nginx: one `location /clusters/wK/` each). Every proxy →
  upstream address pair has its own range of ephemeral ports;
- clients: as many `watch_client` processes, each bound to its own source address
  127.0.0.(`CLIENT_BASE` + c) (bind before connect), its watches round-robin over the
  tenants;
- the proxies listen on 127.0.0.1 and, with one upstream connection per watch (nginx,
  HTTP/1.1 to the upstream), hold two descriptors per watch, so W workers carry at most
  about W * (hard limit - 200) / 2 watches: the run says so when N is above that, and
  measures anyway (what breaks, and how, is part of the answer). The upstreams offer ALPN
  `h2` as a kube-apiserver does: a proxy that takes it can carry many watches per upstream
  connection (HTTP/2 streams), and each proxy row says how many TCP connections its
  processes held to the upstreams while the watches were open.

Per target: the short-request p99 idle (GET list at `watches.SHORT_RATE` req/s), the proxy's
memory (PSS and RSS summed over all its processes), N watches opened (timed), the
short-request p99 while each watch gets an event every `watches.EVENT_PERIOD` s (spread
evenly over time), memory again (per watch: the difference over the open watches, which
have streamed for several seconds by then); then the upstreams
pause their events (they run only while a target's watches are open) and say how many
they wrote, `DRAIN` seconds pass, and the clients
report what they received: lost = written - received (and per-watch numbering gaps).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gateway.quickstart.pki import serving_certificate
from loadtests.bench import procs, stack, watch_h2, watches
from loadtests.bench.issuer import GROUP, LocalIssuer

UPSTREAM_BASE = 20  # upstream k listens on 127.0.0.(20 + k)
CLIENT_BASE = 2  # client c connects from 127.0.0.(2 + c)
PER_PROCESS = 12_500  # watches per upstream and per client process
MAX_WATCHES = 200_000  # a bound: 16 client addresses (127.0.0.2-17) of 12,500
OPEN_TIMEOUT = 600.0  # seconds for every client to open its share
TARGETS = ("direct", "nginx", "vgate")
DRAIN = 3.0  # seconds between pausing the events and closing the watches


@dataclass
class Row:
    """One target's figures."""

    target: str
    n: int
    workers: int
    client_tls: bool
    open: int = 0
    open_s: float = 0.0
    pss_idle: int = 0
    pss_open: int = 0
    rss_idle: int = 0
    rss_open: int = 0
    events: int = 0  # received while held (the latency sample)
    sent: int = 0  # written by the upstreams to this target's watches
    received: int = 0  # received by the clients, from the first event
    gaps: int = 0
    silent: int = 0  # watches that got nothing while held (a slow client, not a loss)
    errors: int = 0
    first_error: str = ""
    event_p50_ms: float = 0.0  # the median of the clients' p50
    event_p99_ms: float = 0.0  # the worst client's p99
    cpu_share: float | None = None  # the proxy's CPU over the relaying window, in cores
    fds: list[int] = field(default_factory=list)  # descriptors per proxy process
    upstream_conns: int | None = None  # the proxy's TCP connections to the upstreams
    idle: dict = field(default_factory=dict)
    spread: dict = field(default_factory=dict)

    @property
    def kb_per_watch(self) -> float | None:
        if not self.open or not self.pss_open:
            return None
        return (self.pss_open - self.pss_idle) / self.open / 1024

    @property
    def rss_kb_per_watch(self) -> float | None:
        if not self.open or not self.rss_open:
            return None
        return (self.rss_open - self.rss_idle) / self.open / 1024


def fd_capacity(workers: int) -> int:
    """Watches `workers` proxy processes can hold under the hard RLIMIT_NOFILE."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return 1 << 30
    return workers * ((min(hard, procs.NOFILE) - 200) // 2)


def _groups(n: int) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    per = min(PER_PROCESS, hard - 200)
    return max(1 if n < 1000 else 2, math.ceil(n / per))


def _nginx_block(upstreams: list[tuple[str, int]], ca: Path) -> str:
    out = ""
    for k, (host, port) in enumerate(upstreams):
        out += (
            f"upstream w{k} {{ server {host}:{port}; keepalive 64;\n"
            "  keepalive_requests 10000000; keepalive_timeout 120s; }\n"
        )
    # reuseport: a listening socket per worker, connections spread by the kernel (one
    # shared socket with multi_accept gave one worker twice the others' share)
    out += "server {\n  listen 127.0.0.1:@PORT@ backlog=4096 reuseport;\n"
    for k in range(len(upstreams)):
        out += (
            f"  location /clusters/w{k}/ {{ proxy_pass https://w{k}/; proxy_http_version 1.1;\n"
            '    proxy_set_header Connection ""; proxy_set_header Host $proxy_host;\n'
            "    proxy_buffering off; proxy_request_buffering off;\n"
            f"    proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on;\n"
            "    proxy_ssl_name localhost; proxy_ssl_session_reuse on;\n"
            "    proxy_read_timeout 3600s; proxy_send_timeout 3600s; }\n"
        )
    return out + "}\n"


def _vgate(
    work: Path, issuer: LocalIssuer, upstreams: list[tuple[str, int]], ca: Path, workers: int
) -> stack.Vgate:
    name = f"vgate-scale-{workers}w"
    tenants = [
        {
            "name": f"w{k}",
            "upstream": f"https://{host}:{port}",
            "ca_file": str(ca),
            "token_file": "tenant.token",
        }
        for k, (host, port) in enumerate(upstreams)
    ]
    roles = {"view": {"groups": [f"oidc:{GROUP}"]}}
    gate = stack.Vgate(
        work,
        issuer.issuer,
        upstreams[0][1],
        procs.proxy_cpu(),
        name=name,
        workers=workers,
        roles=roles,
        extra={"tenants": tenants},
    )
    policies = work / f"policies-{name}"
    (policies / f"{stack.TENANT}.yaml").unlink()
    for k in range(len(upstreams)):
        (policies / f"w{k}.yaml").write_text(yaml.safe_dump({"tenant": f"w{k}", "roles": roles}))
    return gate


def _start_clients(
    clients: list[subprocess.Popen],
    work: Path,
    n: int,
    groups: int,
    targets: list[str],
    extra: list[str],
    hold: float,
) -> None:
    """Start the watch clients, each appended to `clients` as soon as it runs (so that an
    interrupt in between still stops every one)."""
    for c in range(groups):
        share = n // groups + (1 if c < n % groups else 0)
        # each client starts with another tenant, so that every tenant gets its share
        mine = targets[c % len(targets) :] + targets[: c % len(targets)]
        args = ["--n", str(share), "--hold", str(hold), "--until-eof"]
        args += ["--source", f"127.0.0.{CLIENT_BASE + c}", *extra]
        for t in mine:
            args += ["--target", t]
        clients.append(
            subprocess.Popen(
                watches._python("loadtests.bench.watch_client", *args),
                cwd=stack.REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=open(work / "watch-client.log", "ab"),  # noqa: SIM115
                preexec_fn=procs.preexec(procs.load_cpu()),
            )
        )


def _wait_open(clients: list[subprocess.Popen], timeout: float) -> int:
    """Wait until every client says `OPEN k`; the number opened (RuntimeError if a client
    says nothing within `timeout`)."""
    deadline = time.monotonic() + timeout
    waiting = {c.stdout.fileno(): c for c in clients if c.stdout is not None}
    opened = 0
    while waiting:
        left = deadline - time.monotonic()
        ready, _, _ = select.select(list(waiting), [], [], max(left, 0))
        if not ready:
            raise RuntimeError(f"{len(waiting)} watch client(s) did not open within {timeout:.0f}s")
        for fd in ready:
            client = waiting.pop(fd)
            assert client.stdout is not None
            line = client.stdout.readline().decode()
            if not line.startswith("OPEN"):
                raise RuntimeError(f"a watch client failed before opening: {line!r}")
            opened += int(line.split()[1])
    return opened


def _finish(clients: list[subprocess.Popen], row: Row) -> None:
    for c in clients:
        if c.stdin is not None:
            with contextlib.suppress(OSError):
                c.stdin.close()
    p50s = []
    for c in clients:
        assert c.stdout is not None
        out = c.stdout.read().decode()
        c.wait(60)
        r = json.loads(out.strip().splitlines()[-1])
        row.events += r["events"]
        row.received += r["received"]
        row.gaps += r["gaps"]
        row.silent += r["silent"]
        row.errors += r["errors"]
        row.first_error = row.first_error or r["first_error"]
        p50s.append(r["event_p50_ms"])
        row.event_p99_ms = max(row.event_p99_ms, r["event_p99_ms"])
    row.event_p50_ms = sorted(p50s)[len(p50s) // 2] if p50s else 0.0


def _toggle(ups: list[subprocess.Popen]) -> int:
    """Pause (or resume) every upstream's events; the events they have written so far."""
    total = 0
    for up in ups:
        os.kill(up.pid, signal.SIGUSR1)
    for up in ups:
        assert up.stdout is not None
        ready, _, _ = select.select([up.stdout], [], [], 30)
        line = up.stdout.readline().decode() if ready else ""
        if not line.startswith("SENT "):
            raise RuntimeError(f"a watch upstream did not report what it sent: {line!r}")
        total += int(line.split()[1])
    return total


def _fds(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            out.append(len(os.listdir(f"/proc/{pid}/fd")))
    return out


def run(
    work: Path,
    n: int,
    *,
    workers: int,
    seconds: float,
    smoke: bool,
    h2_streams: int = watch_h2.MAX_STREAMS,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure `n` watches on each target in `TARGETS`; a dict with the rows and settings.
    The upstreams advertise `h2_streams` concurrent streams per HTTP/2 connection (0: they
    offer ALPN http/1.1 only)."""
    if not 0 < n <= MAX_WATCHES:
        raise ValueError(f"watches at scale: between 1 and {MAX_WATCHES:,} watches, not {n:,}")
    if h2_streams < 0:
        raise ValueError(f"watches at scale: --upstream-h2-streams {h2_streams} below 0")
    groups = _groups(n)
    capacity = fd_capacity(workers)
    if n > capacity:
        log(
            f"  {n:,} watches need {n // workers * 2 + 200:,} descriptors in each of {workers} "
            f"proxy workers at one upstream connection per watch; the hard RLIMIT_NOFILE here is "
            f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,} per process (raising it needs "
            f"CAP_SYS_RESOURCE): at most about {capacity:,} fit, measuring {n:,} anyway"
        )
    period, settle = (1.0, 0.5) if smoke else (watches.EVENT_PERIOD, watches.SETTLE)
    bookmark = 1.0 if smoke else watches.BOOKMARK_PERIOD
    short_s = max(1.0 if smoke else 2.0, min(seconds, 6.0))
    hold = OPEN_TIMEOUT + settle + short_s + 120  # a bound: clients stop at stdin EOF
    hosts = [f"127.0.0.{UPSTREAM_BASE + k}" for k in range(groups)]
    pki = serving_certificate(work / "pki-scale", ["127.0.0.1", "localhost", *hosts])
    port = procs.free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    docs = stack.static_upstream(work, issuer, procs.load_cpu(), port).start()
    token = issuer.token(7)
    ups: list[subprocess.Popen] = []
    rows: list[Row] = []
    try:
        key = str(pki.key_file)

        def tls_args(host: str) -> tuple[str, ...]:
            h2 = ("--h2-max-streams", str(h2_streams)) if h2_streams else ("--no-h2",)
            return ("--host", host, "--tls-cert", str(pki.cert_file), "--tls-key", key, *h2)

        upstreams = []
        for host in hosts:
            proc, up_port = watches._start_upstream(
                work,
                period,
                bookmark,
                watches.BURST_PERIOD,
                extra=tls_args(host),
            )
            ups.append(proc)
            upstreams.append((host, up_port))
        _toggle(ups)  # paused until a target's watches open
        log(
            f"  {n:,} watches: {groups} TLS upstream(s) on {hosts[0]}.., {groups} client "
            f"process(es) from 127.0.0.{CLIENT_BASE}.., proxies with {workers} workers"
        )
        for target in TARGETS:
            rows.append(
                _measure(
                    target,
                    ups,
                    work,
                    n,
                    workers,
                    groups,
                    upstreams,
                    pki.ca_file,
                    issuer,
                    token,
                    settle=settle,
                    short_s=short_s,
                    hold=hold,
                    smoke=smoke,
                    log=log,
                )
            )
    finally:
        for proc in ups:
            procs.stop(proc)
        docs.stop()
    return {
        "n": n,
        "workers": workers,
        "groups": groups,
        "fd_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "capacity": capacity,
        "h2_streams": h2_streams,
        "event_period_s": period,
        "bookmark_period_s": bookmark,
        "short_rate": watches.SHORT_RATE,
        "short_seconds": short_s,
        "rows": [dict(r.__dict__, kb_per_watch=r.kb_per_watch) for r in rows],
    }


def _measure(
    target: str,
    ups: list[subprocess.Popen],
    work: Path,
    n: int,
    workers: int,
    groups: int,
    upstreams: list[tuple[str, int]],
    ca: Path,
    issuer: LocalIssuer,
    token: str,
    *,
    settle: float,
    short_s: float,
    hold: float,
    smoke: bool,
    log: Callable[[str], None],
) -> Row:
    row = Row(target, n, workers, client_tls=target == "direct")
    proxy: stack.Nginx | stack.Vgate | None = None
    tok: str | None = None
    extra: list[str] = []
    if target == "direct":
        targets = [f"{h}:{p}{watches.WATCH_PATH}" for h, p in upstreams]
        short_url = f"https://{upstreams[0][0]}:{upstreams[0][1]}{stack.LIST_PATH}"
        extra = ["--tls"]
    elif target == "nginx":
        proxy = stack.Nginx(
            work,
            f"proxy-scale-{workers}w",
            _nginx_block(upstreams, ca),
            procs.proxy_cpu(),
            workers=workers,
        )
    else:
        proxy = _vgate(work, issuer, upstreams, ca, workers)
        tok = token
        extra = ["--token", token]
    clients: list[subprocess.Popen] = []
    try:
        if proxy is not None:
            proxy.start()
            base = f"127.0.0.1:{proxy.port}/clusters"
            targets = [f"{base}/w{k}{watches.WATCH_PATH}" for k in range(len(upstreams))]
            short_url = f"http://{base}/w0{stack.LIST_PATH}"
        pids = proxy.pids if proxy is not None else []
        if not smoke:
            from loadtests.bench import wrk

            wrk.run(short_url, seconds=1, connections=10, token=tok)  # warm up
        row.idle = watches._short(short_url, tok, short_s)
        row.pss_idle, row.rss_idle = procs.pss_bytes(pids), procs.rss_bytes(pids)
        # the events run only while this target's watches are open (a previous target's
        # connections, closing, must not count)
        base = _toggle(ups)  # resumed
        t0 = time.monotonic()
        _start_clients(clients, work, n, groups, targets, extra, hold)
        row.open = _wait_open(clients, OPEN_TIMEOUT)
        row.open_s = time.monotonic() - t0
        cpu0 = procs.cpu_seconds(pids)
        time.sleep(settle)
        if pids:
            row.cpu_share = (procs.cpu_seconds(pids) - cpu0) / settle
        row.spread = watches._short(short_url, tok, short_s)
        # memory once the watches have streamed for a while (timers of the opening gone)
        row.pss_open, row.rss_open = procs.pss_bytes(pids), procs.rss_bytes(pids)
        row.fds = _fds(pids)
        if pids:
            row.upstream_conns = procs.connections_to(pids, set(upstreams))
        row.sent = _toggle(ups) - base  # paused
        time.sleep(DRAIN)  # what is on its way arrives
        _finish(clients, row)
    finally:
        for c in clients:
            procs.stop(c)
        if proxy is not None:
            proxy.stop()
    kb = row.kb_per_watch
    log(
        f"  {target:<6} {row.open:>6,}/{n:,} open in {row.open_s:.1f}s"
        + (f", {kb:.2f} KB/watch (PSS)" if kb is not None else "")
        + f", events sent {row.sent:,} received {row.received:,} (gaps {row.gaps}, silent "
        f"{row.silent}), event p99 "
        f"{row.event_p99_ms:.1f} ms, short p99 {row.idle['p99_ms']:.2f} -> "
        f"{row.spread['p99_ms']:.2f} ms, errors {row.errors} {row.first_error} "
        f"fds {row.fds} upstream connections {row.upstream_conns} "
        f"load {procs.load_average()}"
    )
    return row


def table(w: dict) -> list[str]:
    """The scale run as Markdown."""
    rows = w["rows"]
    by = {r["target"]: r for r in rows}
    ng = by.get("nginx")
    out = [
        f"{w['n']:,} watches, proxies with {w['workers']} workers (all on the proxy core), "
        f"{w['groups']} TLS upstream process(es) and as many client processes (own source "
        f"addresses); hard RLIMIT_NOFILE {w['fd_hard']:,} per process, so about "
        f"{w['capacity']:,} watches fit in {w['workers']} proxy workers. Client side: plain "
        "HTTP to the proxies, TLS straight to the upstream (direct). "
        + _alpn(w.get("h2_streams"))
        + "; upstream connections: the proxy's established TCP connections to them while the "
        "watches were open.",
        "",
        "| target | client side | open watches | opened in s | PSS idle MB | PSS open MB "
        "| KB per watch (PSS) | x nginx | KB per watch (RSS) | proxy CPU (cores) "
        "| events sent | lost (sent - received) | numbering gaps | event p50 ms "
        "| event p99 ms | errors | fds per process | upstream connections |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        kb = r.get("kb_per_watch")
        ratio = "—"
        if kb is not None and ng and ng.get("kb_per_watch"):
            ratio = f"{kb / ng['kb_per_watch']:.2f}"
        rss_kb = (r["rss_open"] - r["rss_idle"]) / r["open"] / 1024 if r["open"] else 0.0
        cpu = "—" if r["cpu_share"] is None else f"{r['cpu_share']:.2f}"
        out.append(
            f"| {r['target']} | {'TLS' if r['client_tls'] else 'plain'} | "
            f"{r['open']:,}/{r['n']:,} | {r['open_s']:.1f} | "
            f"{r['pss_idle'] / 2**20:.1f} | {r['pss_open'] / 2**20:.1f} | "
            f"{'—' if kb is None else f'{kb:.2f}'} | {ratio} | "
            f"{'—' if not r['rss_open'] else f'{rss_kb:.2f}'} | {cpu} | {r['sent']:,} | "
            f"{r['sent'] - r['received']} | {r['gaps']} | {r['event_p50_ms']:.2f} | "
            f"{r['event_p99_ms']:.2f} | "
            f"{r['errors']} | {' '.join(map(str, r['fds'])) or '—'} | "
            f"{_conns(r.get('upstream_conns'), r['open'])} |"
        )
    out += [
        "",
        f"Short requests (GET list, {w['short_rate']} req/s for {w['short_seconds']:g} s) idle "
        f"and while every watch gets an event every {w['event_period_s']:g} s and a bookmark "
        f"every {w['bookmark_period_s']:g} s, spread evenly over time (target: p99 ≤ 1.5x "
        "idle):",
        "",
        "| target | idle req/s | idle p50 ms | idle p99 ms | spread req/s | spread p50 ms "
        "| spread p99 ms | p99 x idle | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        i, s = r["idle"], r["spread"]
        ratio = f"{s['p99_ms'] / i['p99_ms']:.2f}" if i.get("p99_ms") and s["rps"] else "—"
        out.append(
            f"| {r['target']} | {i['rps']:,.0f} | {i['p50_ms']:.2f} | {i['p99_ms']:.2f} | "
            f"{s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {ratio} | "
            f"{i['errors'] + s['errors']} |"
        )
    return out


def _alpn(h2_streams: int | None) -> str:
    if h2_streams is None:  # a run from before the upstreams spoke HTTP/2
        return "The upstreams spoke HTTP/1.1 only"
    if not h2_streams:
        return "The upstreams offered ALPN http/1.1 only"
    return (
        f"The upstreams offered ALPN h2 (at most {h2_streams:,} streams per connection) "
        "and http/1.1"
    )


def _conns(conns: int | None, watches: int) -> str:
    """The upstream connections cell: the count and the watches each carries on average."""
    if conns is None:
        return "—"
    if not conns:
        return "0"
    return f"{conns:,} ({watches / conns:,.1f} watches each)"


def errors(w: dict) -> int:
    """Failures that make the run fail: errors, lost events, short-request errors (a short
    run that completed no request at all, when wrk could not even connect, counts one)."""
    return sum(
        r["errors"]
        + r["gaps"]
        + abs(r["sent"] - r["received"])
        + r["idle"]["errors"]
        + r["spread"]["errors"]
        + (not r["idle"]["rps"])
        + (not r["spread"]["rps"])
        for r in w["rows"]
    )
