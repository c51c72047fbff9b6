"""A noisy neighbour: tenant `flood` is flooded at 5x its rate limit while tenant `bench`'s
latency is measured at a fixed rate, interleaved with the same measurement without the
flood. One vgate (`vgate-fair`, 1 worker, pinned like every target) serves both tenants from
the same static upstream; only `flood` has a limit. The flood's excess gets the limit step's
429, so what it costs the other tenant is the cost of refusing it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from loadtests.bench import procs, stack, wrk
from loadtests.bench.issuer import GROUP, LocalIssuer
from loadtests.bench.throughput import Sample, Summary, Target, measure, summarize

FLOODED = "flood"
FLOOD_LIMIT = 200  # requests per second the flooded tenant may make (burst the same)
FLOOD_FACTOR = 5
FLOOD_CONNECTIONS = 10
TARGET_P99_RATIO = 1.20
SLICES = 3  # alone/flooded pairs per round; the tables show medians over all of them


def run(
    work: Path,
    issuer: LocalIssuer,
    upstream_port: int,
    *,
    calm_rps: float,
    rounds: int,
    seconds: float,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure `bench` at `calm_rps` without and with `flood` flooded: `rounds` x `SLICES`
    pairs of `seconds`-long runs."""
    tenants = [
        {
            "name": name,
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "token_file": "tenant.token",
        }
        for name in (stack.TENANT, FLOODED)
    ]
    gate = stack.Vgate(
        work,
        issuer.issuer,
        upstream_port,
        procs.proxy_cpu(),
        name="vgate-fair",
        roles={"view": {"groups": [f"oidc:{GROUP}"]}},
        extra={
            "tenants": tenants,
            "rate_limits": {
                "tenants": {
                    FLOODED: {"tenant": {"requests_per_second": FLOOD_LIMIT, "burst": FLOOD_LIMIT}}
                }
            },
        },
    )
    (work / "policies-vgate-fair" / f"{FLOODED}.yaml").write_text(
        yaml.safe_dump({"tenant": FLOODED, "roles": {"view": {"groups": [f"oidc:{GROUP}"]}}})
    )
    calm_conns = max(4, round(calm_rps * 0.010))
    calm_pace = max(1, round(calm_conns * 1000 / calm_rps))
    flood_rps = FLOOD_LIMIT * FLOOD_FACTOR
    flood_pace = max(1, round(FLOOD_CONNECTIONS * 1000 / flood_rps))
    gate.start()
    try:
        pids = gate.pids
        calm = Target(
            "bench", gate.base + stack.LIST_PATH, lambda: pids, token=issuer.token(10**9 + 7)
        )
        flood_url = f"http://127.0.0.1:{gate.port}/clusters/{FLOODED}{stack.LIST_PATH}"
        flood_token = issuer.token(10**9 + 8)
        log(
            f"noisy neighbour: {stack.TENANT} at {calm_rps:,.0f} req/s offered "
            f"({calm_conns} connections x 1 per {calm_pace} ms), alone and while {FLOODED} "
            f"(limit {FLOOD_LIMIT}/s) is sent {flood_rps:,}/s, load {procs.load_average()}"
        )
        quiet: list[Sample] = []
        loud: list[Sample] = []
        floods: list[wrk.WrkResult] = []
        measure(calm, seconds=1, connections=calm_conns, pace_ms=calm_pace)  # warm up
        for r in range(rounds):
            for _ in range(SLICES):  # alone, flooded, alone, flooded, …: noise hits both
                quiet.append(
                    measure(calm, seconds=seconds, connections=calm_conns, pace_ms=calm_pace)
                )
                time.sleep(0.3)
                result: list[wrk.WrkResult] = []
                flooder = threading.Thread(
                    target=_flood, args=(result, flood_url, flood_token, seconds + 2, flood_pace)
                )
                flooder.start()
                time.sleep(1.0)  # the flood is on (and its burst spent) before measuring
                loud.append(
                    measure(calm, seconds=seconds, connections=calm_conns, pace_ms=calm_pace)
                )
                flooder.join()
                floods.append(result[0])
                time.sleep(0.3)
            f = result[0]
            log(
                f"  round {r + 1}/{rounds} {stack.TENANT} alone p50 "
                f"{quiet[-1].result.p50_us / 1000:.2f} p99 {quiet[-1].result.p99_us / 1000:.2f}"
                f" ms | flooded p50 {loud[-1].result.p50_us / 1000:.2f} p99 "
                f"{loud[-1].result.p99_us / 1000:.2f} ms | flood {f.rps:,.0f} req/s, "
                f"{f.non_2xx / max(f.requests, 1):.0%} refused (429), load {procs.load_average()}"
                f" (last of {SLICES} pairs)"
            )
    finally:
        gate.stop()
    flood_requests = sum(f.requests for f in floods)
    return {
        "calm_rps": calm_rps,
        "limit": FLOOD_LIMIT,
        "flood_rps_offered": flood_rps,
        "pairs": len(quiet),
        "alone": summarize(f"{stack.TENANT} alone", quiet),
        "flooded": summarize(f"{stack.TENANT} while {FLOODED} floods", loud),
        "flood_rps": sum(f.rps for f in floods) / len(floods),
        "flood_refused": (
            sum(f.non_2xx for f in floods) / flood_requests if flood_requests else 0.0
        ),
        "flood_errors": sum(f.errors for f in floods),
    }


def _flood(into: list[wrk.WrkResult], url: str, token: str, seconds: float, pace_ms: int) -> None:
    into.append(
        wrk.run(url, seconds=seconds, connections=FLOOD_CONNECTIONS, token=token, pace_ms=pace_ms)
    )


def table(fair: dict) -> list[str]:
    """The Markdown rows of the noisy-neighbour section."""
    alone, flooded = fair["alone"], fair["flooded"]
    assert isinstance(alone, Summary) and isinstance(flooded, Summary)
    ratio = flooded.p99_ms / alone.p99_ms if alone.p99_ms else 0.0
    return [
        f"`{FLOODED}` (limit {fair['limit']} req/s) is sent {fair['flood_rps_offered']:,} "
        f"req/s ({fair['flood_rps']:,.0f} achieved, {fair['flood_refused']:.0%} answered 429) "
        f"while `{stack.TENANT}` is measured at {fair['calm_rps']:,.0f} req/s offered, alone and "
        f"flooded alternately ({fair['pairs']} pairs; medians):",
        "",
        "| tenant bench | req/s | p50 ms | p99 ms | CPU µs/req (all of vgate) | errors |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {s.name} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.cpu_us:.1f} | "
            f"{s.errors} |"
            for s in (alone, flooded)
        ),
        "",
        f"p99 flooded / alone: {ratio:.2f} (target ≤ {TARGET_P99_RATIO:.2f}); p50 "
        f"{flooded.p50_ms / alone.p50_ms if alone.p50_ms else 0:.2f}. CPU per request while "
        "flooded counts the refused flood requests too.",
    ]
