"""The bench's tables: machine and versions, throughput and latency as ratios to nginx,
watch memory and latency; as Markdown (printed and written) and as JSON."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from loadtests.bench import (
    fairness,
    kube,
    lifecycle_tenants,
    procs,
    stack,
    tenants,
    tokens,
    watch_scale,
    wrk,
)
from loadtests.bench.throughput import Summary


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine(build: str = "interpreted") -> dict:
    """The machine, versions and load average; `build`: how vgate runs (compiled or
    interpreted)."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = _version(["git", "-C", str(stack.REPO_ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _version(
        [
            "git",
            "-C",
            str(stack.REPO_ROOT),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "gateway",
        ]
    )
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nginx": _version([stack.nginx_binary() or "nginx", "-v"]).replace("nginx version: ", ""),
        "wrk": _version([wrk.wrk_binary() or "wrk", "-v"]).split(" [")[0],
        "vgate": commit
        + (" (+ uncommitted changes in gateway/)" if dirty not in ("", "?") else "")
        + f", request path {build}",
        "load_start": procs.load_average(),
    }
    info["summary"] = (
        f"{info['nproc']} x {cpu}, Linux {info['kernel']}, Python "
        f"{info['python']}, {info['nginx']}, {info['wrk']}, vgate {info['vgate']}"
    )
    return info


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "—"


def _max_table(rmax: dict[str, Summary], ad_skipped: str | None = None) -> list[str]:
    rows = [
        "| target | req/s | xnginx | p50 ms | xnginx | p99 ms | xnginx | added p50 ms "
        "| added p99 ms | CPU µs/req | of which user | req/s per core | xnginx | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rmax.values():
        direct, ng = rmax.get(s.direct, s), rmax.get(s.nginx, s)
        add50 = s.p50_ms - direct.p50_ms
        add99 = s.p99_ms - direct.p99_ms
        note = (
            f" ({s.reused / s.requests:.0%} of requests reused a token: pool too small)"
            if s.reused
            else ""
        )
        rows.append(
            f"| {s.name} | {s.rps:,.0f} | {_ratio(s.rps, ng.rps)} | {s.p50_ms:.2f} | "
            f"{_ratio(s.p50_ms, ng.p50_ms)} | {s.p99_ms:.2f} | {_ratio(s.p99_ms, ng.p99_ms)} | "
            f"{add50:+.2f} | {add99:+.2f} | {s.cpu_us:.1f} | {s.user_us:.1f} | "
            f"{s.capacity:,.0f} | "
            f"{_ratio(s.capacity, ng.capacity)} | {s.errors}{note} |"
        )
    if "vgate-ad-groups" not in rmax and "vgate-denied" in rmax:
        rows.append(f"| vgate-ad-groups | not measured: {ad_skipped or 'not run'} |||||||||||||")
    if "vgate-denied" in rmax:
        rows += [
            "",
            "vgate-denied: a valid token whose user has no role on the tenant; every "
            "answer is the gateway's 403 `Status` (the errors column counts anything else).",
        ]
    if "vgate-2-workers" in rmax:
        two, one = rmax["vgate-2-workers"], rmax["vgate-cached"]
        rows += [
            "",
            "vgate-2-workers: `workers: 2`, both processes on the proxy core; CPU per "
            f"request {_ratio(two.cpu_us, one.cpu_us)}x one worker's, user space "
            f"{_ratio(two.user_us, one.user_us)}x (1.00 = cost linear in workers: a second "
            "core would add a whole worker's throughput).",
        ]
    if "vgate-ad-groups" in rmax:
        rows += [
            "",
            "vgate-ad-groups: a user whose token groups give no role; `view` comes "
            "from an Active Directory group (a real Samba AD DC) that vgate has cached.",
        ]
    if "vgate-tls" in rmax:
        rows += ["", TLS_NOTE]
    return rows


TLS_NOTE = (
    "TLS rows (TLS 1.3, one ECDSA P-256 certificate for every listener): `-tls-up` = plain "
    "HTTP from wrk, TLS from the proxy to the upstream (nginx: `proxy_ssl`, certificate "
    "verified; vgate: an `https://` tenant with `ca_file`); `-tls` = TLS on both hops, "
    "compared with `direct-tls` (wrk over TLS straight to the upstream) and `nginx-tls`. "
    "`nginx-tls-logged` is `nginx-tls` writing an access line per request (JSON: time, "
    "request id, source, method, path, status, bytes, duration; buffered 64 KB / 200 ms), "
    "as vgate writes its audit line; the other nginx rows log nothing. "
    "Connections are kept alive, so this is the cost of the records, not of handshakes."
)


def _half_table(rhalf: dict[str, Summary]) -> list[str]:
    rows = [
        "| target | achieved req/s | p50 ms | p99 ms | added p99 ms | xnginx added | "
        "CPU µs/req | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rhalf.values():
        direct, ng = rhalf.get(s.direct, s), rhalf.get(s.nginx, s)
        add = s.p99_ms - direct.p99_ms
        ng_add = ng.p99_ms - direct.p99_ms
        rows.append(
            f"| {s.name} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | "
            f"{add:+.2f} | {_ratio(add, ng_add) if s is not direct else '—'} | "
            f"{s.cpu_us:.1f} | {s.errors} |"
        )
    return rows


def _maybe(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _watch_tables(w: dict) -> list[str]:
    rows = [
        "| proxy | open watches | pattern | opened in s | RSS before MB | RSS open MB "
        "| KB per watch | xnginx | events | event p50 ms | event p99 ms | CPU µs/event "
        "| errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per = {(r["proxy"], r["n"], r.get("pattern")): r for r in w["runs"]}
    for r in w["runs"]:
        ng = per.get(("nginx", r["n"], r.get("pattern")))
        ratio = _ratio(r["kb_per_watch"], ng["kb_per_watch"]) if ng else "—"
        kb = f"{r['kb_per_watch']:.1f}"
        if r.get("pattern", "spread") != "spread":  # same process, after the spread run
            kb = ratio = "—"
        rows.append(
            f"| {r['proxy']} | {r['open']:,}/{r['n']:,} | {r.get('pattern', 'spread')} | "
            f"{r['open_s']:.1f} | "
            f"{r['rss_before'] / 2**20:.1f} | {r['rss_open'] / 2**20:.1f} | "
            f"{kb} | {ratio} | {r['events']:,} | {r['event_p50_ms']:.2f} | "
            f"{r['event_p99_ms']:.2f} | {_maybe(r.get('cpu_us_per_event'))} | {r['errors']} |"
        )
    if w.get("short"):
        rows += [
            "",
            "Memory per watch is measured on the spread run (a freshly started proxy); "
            "the burst run reuses that process. CPU per event: the proxy's CPU time over "
            "the first seconds after the watches opened (nothing but events to relay) "
            "over the events the client received in those seconds.",
            "",
            "Events: *spread* = each watch an event every "
            f"{w.get('event_period_s', 0):g} s and a bookmark every "
            f"{w.get('bookmark_period_s', 0):g} s, evenly spread over time; *burst* = one "
            f"event to every watch at the same moment, every "
            f"{w.get('burst_period_s', 0):g} s (target for both: p99 ≤ 1.5x idle).",
            "",
            "Short requests (GET list, cached token, fixed rate) with watches open:",
            "",
            "| proxy | open watches | pattern | req/s | p50 ms | p99 ms | p99 x idle | errors |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        idle = {s["proxy"]: s for s in w["short"] if s["n"] == 0}
        for s in w["short"]:
            base = idle.get(s["proxy"])
            rows.append(
                f"| {s['proxy']} | {s['n']:,} | {s.get('pattern', 'spread')} | "
                f"{s['rps']:,.0f} | {s['p50_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | "
                f"{_ratio(s['p99_ms'], base['p99_ms']) if base else '—'} | "
                f"{s['errors']} |"
            )
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    out = [
        f"### Run of {m['date']} (provisional unless the load average was ~0)",
        "",
        f"- command: `{results['command']}`",
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; Python {m['python']}, "
        f"nginx {m['nginx']}, {m['wrk']}, vgate {m['vgate']}",
        f"- load average (1/5/15 min): at start {m['load_start']}, at end "
        f"{procs.load_average()}; elapsed {results.get('elapsed_s', 0):.0f} s",
        "- pinning: the proxy under test on CPU "
        f"{sorted(procs.proxy_cpu() or [])}, wrk, clients and the upstream on "
        f"{sorted(procs.load_cpu() or [])}",
        "",
    ]
    if "max" in results:
        out += [
            "#### Maximum throughput (closed loop, GET of a ~2 KB PodList)",
            "",
            *_max_table(results["max"], results.get("ad_groups_skipped")),
            "",
        ]
    if "half" in results:
        out += [
            f"#### Latency at half of vgate's max rate "
            f"({results['half_rate_target']:,.0f} req/s offered)",
            "",
            *_half_table(results["half"]),
            "",
        ]
    if "half_tls" in results:
        out += [
            f"#### Latency at half of vgate-tls's max rate, TLS on both hops "
            f"({results['half_tls_rate_target']:,.0f} req/s offered)",
            "",
            *_half_table(results["half_tls"]),
            "",
        ]
    if "fairness" in results:
        out += ["#### Noisy neighbour (rate limits)", "", *fairness.table(results["fairness"]), ""]
    if "kube" in results:
        out += [
            f"#### A real kube-apiserver (TLS everywhere, {results['kube']['connections']} "
            "connections, closed loop)",
            "",
            *kube.table(results["kube"]),
            "",
        ]
    elif "kube_skipped" in results:
        out += ["#### A real kube-apiserver", "", f"Not measured: {results['kube_skipped']}.", ""]
    if "tenants" in results:
        out += ["#### Tenants at scale", "", *tenants.table(results["tenants"]), ""]
    if "lifecycle_tenants" in results:
        out += [
            "#### Lifecycle tenants at scale (half paused)",
            "",
            *lifecycle_tenants.table(results["lifecycle_tenants"]),
            "",
        ]
    if "tokens" in results:
        out += ["#### A never-seen token", "", *tokens.table(results["tokens"]), ""]
    if "watches" in results:
        out += ["#### Concurrent watches", "", *_watch_tables(results["watches"]), ""]
    for w in results.get("watch_scale", []):
        out += [f"#### {w['n']:,} watches at scale", "", *watch_scale.table(w), ""]
    out += closing(results)
    return "\n".join(out)


def closing(results: dict) -> list[str]:
    lines = []
    if "max" in results:
        r = results["max"]
        c, ng = r["vgate-cached"], r["nginx"]
        fresh = r.get("vgate-fresh-jwt")
        lines.append(
            f"vgate (1 worker, cached token) served {_ratio(c.rps, ng.rps)}x nginx's requests/s "
            f"and {_ratio(c.capacity, ng.capacity)}x nginx's requests per core-second "
            "(target ≥ 0.25)"
            + (
                f"; with a fresh JWT per request {_ratio(fresh.capacity, ng.capacity)}x per core."
                if fresh
                else "."
            )
        )
        for name, hops in (
            ("vgate-tls-up", "TLS to the upstream"),
            ("vgate-tls", "TLS on both hops"),
        ):
            if name in r:
                t, tng = r[name], r[r[name].nginx]
                lines.append(
                    f"With {hops}: vgate {t.cpu_us:.1f} µs of CPU per request (user "
                    f"{t.user_us:.1f}) against nginx's {tng.cpu_us:.1f} (user "
                    f"{tng.user_us:.1f}): {_ratio(t.capacity, tng.capacity)}x nginx "
                    "per core" + (" (target ≥ 0.5)." if name == "vgate-tls" else ".")
                )
        if "vgate-tls" in r and "nginx-tls-logged" in r:
            t, logged = r["vgate-tls"], r["nginx-tls-logged"]
            lines.append(
                f"With TLS on both hops, against nginx writing an access line per request "
                f"as vgate writes its audit line: nginx {logged.cpu_us:.1f} µs of CPU per "
                f"request (user {logged.user_us:.1f}): vgate "
                f"{_ratio(t.capacity, logged.capacity)}x nginx per core."
            )
        if "vgate-2-workers" in r:
            two = r["vgate-2-workers"]
            lines.append(
                f"Two workers: {two.cpu_us:.1f} µs of CPU per request against "
                f"{c.cpu_us:.1f} with one ({_ratio(two.cpu_us, c.cpu_us)}x; user space "
                f"{two.user_us:.1f} against {c.user_us:.1f})."
            )
        if "vgate-ad-groups" in r:
            lines.append(
                f"With AD groups cached: {r['vgate-ad-groups'].cpu_us:.1f} µs of CPU per "
                f"request ({_ratio(r['vgate-ad-groups'].capacity, ng.capacity)}x nginx "
                "per core)."
            )
    for key, name, what in (
        ("half", "vgate-cached", "plain HTTP"),
        ("half_tls", "vgate-tls", "TLS on both hops"),
    ):
        if key in results:
            h = results[key]
            v = h[name]
            add = v.p99_ms - h[v.direct].p99_ms
            ng_add = h[v.nginx].p99_ms - h[v.direct].p99_ms
            lines.append(
                f"Added p99 at half of {name}'s max rate ({what}): {add:+.2f} ms, "
                f"{_ratio(add, ng_add)}x nginx's {ng_add:+.2f} ms (target ≤ 1.5x)."
            )
    if "fairness" in results:
        f = results["fairness"]
        lines.append(
            f"A tenant flooded at {fairness.FLOOD_FACTOR}x its limit: the other "
            f"tenant's p99 {_ratio(f['flooded'].p99_ms, f['alone'].p99_ms)}x what it is "
            f"alone (target ≤ {fairness.TARGET_P99_RATIO:.2f})."
        )
    if "watches" in results:
        w = results["watches"]
        for r in w["runs"]:
            if r["proxy"] == "vgate" and r.get("pattern", "spread") == "spread":
                lines.append(f"{r['n']:,} watches: vgate {r['kb_per_watch']:.1f} KB per watch.")
        idle = {s["proxy"]: s for s in w.get("short", []) if s["n"] == 0}
        for s in w.get("short", []):
            base = idle.get(s["proxy"])
            if s["proxy"] == "vgate" and s["n"] and base:
                lines.append(
                    f"Short-request p99 with {s['n']:,} watches open ({s['pattern']} events): "
                    f"{_ratio(s['p99_ms'], base['p99_ms'])}x idle (target ≤ 1.5)."
                )
    return ["#### Summary", "", *(f"- {x}" for x in lines)]


def errors(results: dict) -> int:
    n = 0
    n += sum(s.errors for s in results.get("kube", {}).get("rows", {}).values())
    n += sum(w["errors"] for w in results.get("kube", {}).get("watch", []))
    n += sum(r["errors"] for r in results.get("tenants", {}).get("rows", []))
    for key in ("max", "half", "half_tls"):
        n += sum(s.errors for s in results.get(key, {}).values())
    fair = results.get("fairness")
    if fair:
        n += fair["alone"].errors + fair["flooded"].errors + fair["flood_errors"]
    n += sum(watch_scale.errors(w) for w in results.get("watch_scale", []))
    w = results.get("watches") or {}
    n += sum(r["errors"] for r in w.get("runs", []))
    n += sum(s["errors"] for s in w.get("short", []))
    return n


def as_json(results: dict) -> dict:
    def conv(v):
        if isinstance(v, Summary):
            d = dataclasses.asdict(v)
            d["capacity"] = v.capacity
            return d
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return conv(results)
