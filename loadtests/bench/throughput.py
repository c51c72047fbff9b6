"""Short-request throughput and latency: direct, nginx, vgate (cached and fresh tokens),
measured interleaved (A B A B …) so a noisy neighbour hits every target alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.bench import procs, wrk


@dataclass
class Target:
    """One thing to measure: a URL, how requests authenticate, whose CPU to count."""

    name: str
    url: str
    pids: Callable[[], list[int]]
    token: str | None = None
    token_files: list[Path] = field(default_factory=list)  # one per round (fresh tokens)
    before: Callable[[], None] | None = None  # run before each measurement (e.g. a restart)
    refused: bool = False  # every answer must be a 403 (a user without a role)
    # the rows this one is compared with: the latency baseline (wrk straight to the
    # upstream, over the same client-side protocol) and nginx on the same hops
    direct: str = "direct"
    nginx: str = "nginx"
    headers: list[tuple[str, str]] = field(default_factory=list)  # more header lines
    # the server behind the proxy (a real kube-apiserver): its CPU is counted separately
    backend: Callable[[], list[int]] | None = None


@dataclass
class Sample:
    result: wrk.WrkResult
    cpu_s: float
    load: str
    user_s: float = 0.0  # the user-space part of cpu_s
    backend_s: float = 0.0  # CPU of the target's backend over the same run


@dataclass
class Summary:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # CPU of the proxy process per request
    user_us: float  # of which user space (the kernel's share varies most with the machine)
    requests: int
    errors: int
    reused: int
    samples: list[Sample]
    direct: str = "direct"  # the names of the rows it is compared with (`Target`)
    nginx: str = "nginx"
    backend_us: float = 0.0  # CPU of the backend (e.g. the API server) per request

    @property
    def capacity(self) -> float:
        """Requests per second per fully used core (1e6 / CPU µs per request)."""
        return 1e6 / self.cpu_us if self.cpu_us else 0.0


def measure(
    target: Target, *, seconds: float, connections: int, round_no: int = 0, pace_ms: int = 0
) -> Sample:
    if target.before is not None:
        target.before()
    pids = target.pids()
    token_file = (
        target.token_files[round_no % len(target.token_files)] if target.token_files else None
    )
    backend = target.backend() if target.backend is not None else []
    user0, system0 = procs.cpu_times(pids)
    back0 = procs.cpu_seconds(backend)
    result = wrk.run(
        target.url,
        seconds=seconds,
        connections=connections,
        token=target.token,
        token_file=token_file,
        pace_ms=pace_ms,
        headers=target.headers,
    )
    user1, system1 = procs.cpu_times(pids)
    back1 = procs.cpu_seconds(backend)
    return Sample(
        result,
        user1 - user0 + system1 - system0,
        procs.load_average(),
        user1 - user0,
        back1 - back0,
    )


def failures(sample: Sample, refused: bool) -> int:
    """Requests that did not get the expected answer (2xx, or 403 when `refused`)."""
    r = sample.result
    return r.errors + (r.requests - r.non_2xx if refused else r.non_2xx)


def summarize(
    name: str,
    samples: list[Sample],
    refused: bool = False,
    *,
    direct: str = "direct",
    nginx: str = "nginx",
) -> Summary:
    requests = sum(s.result.requests for s in samples)
    return Summary(
        name=name,
        rps=statistics.median(s.result.rps for s in samples),
        p50_ms=statistics.median(s.result.p50_us for s in samples) / 1000,
        p99_ms=statistics.median(s.result.p99_us for s in samples) / 1000,
        cpu_us=(sum(s.cpu_s for s in samples) / requests * 1e6) if requests else 0.0,
        user_us=(sum(s.user_s for s in samples) / requests * 1e6) if requests else 0.0,
        requests=requests,
        errors=sum(failures(s, refused) for s in samples),
        reused=sum(s.result.reused for s in samples),
        samples=samples,
        direct=direct,
        nginx=nginx,
        backend_us=(sum(s.backend_s for s in samples) / requests * 1e6) if requests else 0.0,
    )


def interleaved(
    targets: list[Target],
    *,
    rounds: int,
    seconds: float,
    connections: int,
    warmup: float,
    pace_ms: dict[str, int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Summary]:
    """Warm every target up, then run rounds of A B C D, A B C D, …"""
    if warmup > 0:
        for t in targets:
            if not t.token_files:  # fresh-token pools are sized for the measured rounds
                measure(t, seconds=warmup, connections=connections)
    samples: dict[str, list[Sample]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in targets:
            pace = (pace_ms or {}).get(t.name, 0)
            s = measure(t, seconds=seconds, connections=connections, round_no=r, pace_ms=pace)
            samples[t.name].append(s)
            log(
                f"  round {r + 1}/{rounds} {t.name:<16} {s.result.rps:9.0f} req/s  "
                f"p50 {s.result.p50_us / 1000:6.2f} ms  p99 {s.result.p99_us / 1000:6.2f} ms  "
                f"cpu {s.cpu_s / max(s.result.requests, 1) * 1e6:6.1f} µs/req "
                f"(user {s.user_s / max(s.result.requests, 1) * 1e6:5.1f})  "
                f"errors {failures(s, t.refused)}  load {s.load}"
                + (
                    f"  backend {s.backend_s / max(s.result.requests, 1) * 1e6:.1f} µs/req"
                    if t.backend is not None
                    else ""
                )
            )
            time.sleep(0.3)
    by_name = {t.name: t for t in targets}
    return {
        name: summarize(
            name, ss, by_name[name].refused, direct=by_name[name].direct, nginx=by_name[name].nginx
        )
        for name, ss in samples.items()
    }
