"""Tenants at scale: one vgate (`workers: 2`, both on the proxy core) with 10, 1,000 and
10,000 static tenants, all routed to the bench's static upstream, one wildcard policy file
(`tenant: "*"`) granting `view`. One gateway per count, all running at once, measured
interleaved (so a noisy neighbour hits every count alike):

- start-up: from the process start until `/readyz` answers 200;
- memory: the RSS of the master and both workers, and per tenant against the smallest count;
- CPU per cached-token request to one tenant (closed loop, as in the request mode);
- a new tenant: the time from writing it into the config file until 20 requests in a row,
  each on a new connection (so either worker may take it), are answered 200;
- a policy change: the time from withdrawing the wildcard grant until 20 requests in a
  row are refused (403), then from restoring it until 20 in a row pass again.

Static tenants cannot be paused (that is the lifecycle manager's), so every tenant here is
live.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from loadtests.bench import procs, stack
from loadtests.bench.issuer import GROUP, LocalIssuer
from loadtests.bench.throughput import Target, interleaved

COUNTS = (10, 1_000, 10_000)
IN_A_ROW = 20
TIMEOUT_S = 60.0
TARGET_CPU_SPREAD = 0.05


def _tenants(count: int, upstream_port: int) -> list[dict]:
    names = [stack.TENANT] + [f"t{i:05d}" for i in range(1, count)]
    return [
        {"name": n, "upstream": f"http://127.0.0.1:{upstream_port}", "token_file": "tenant.token"}
        for n in names
    ]


def _status(port: int, path: str, token: str) -> int:
    """One request on a new connection (0 when nothing answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def until_status(port: int, path: str, token: str, want: int) -> float:
    """Seconds until `IN_A_ROW` requests in a row get `want` (inf past `TIMEOUT_S`)."""
    start = time.monotonic()
    streak = 0
    while time.monotonic() - start < TIMEOUT_S:
        streak = streak + 1 if _status(port, path, token) == want else 0
        if streak >= IN_A_ROW:
            return time.monotonic() - start
        if streak == 0:
            time.sleep(0.02)
    return float("inf")


def _write(path: Path, doc: dict) -> None:
    """Replace a file in one rename (the reload never reads half of it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


GRANT = {"tenant": "*", "roles": {"view": {"groups": [f"oidc:{GROUP}"]}}}


def run(
    work: Path,
    *,
    seconds: float,
    rounds: int,
    counts: tuple[int, ...] = COUNTS,
    log: Callable[[str], None] = print,
) -> dict:
    port = procs.free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    up = stack.static_upstream(work, issuer, procs.load_cpu(), port).start()
    token = issuer.token(10**9)
    gates: list[stack.Vgate] = []
    rows = []
    try:
        for count in counts:
            name = f"vgate-tenants-{count}"
            gate = stack.Vgate(
                work,
                issuer.issuer,
                up.port,
                procs.proxy_cpu(),
                name=name,
                workers=2,
                roles={},
                extra={"tenants": _tenants(count, up.port)},
            )
            policies = work / f"policies-{name}"
            (policies / f"{stack.TENANT}.yaml").unlink()
            _write(policies / "all.yaml", GRANT)
            t0 = time.monotonic()
            gates.append(gate.start(timeout=300))
            rows.append({"tenants": count, "start_s": time.monotonic() - t0})
        time.sleep(1.0)
        measure(
            rows,
            gates,
            [g.base + stack.LIST_PATH for g in gates],
            token,
            "tenants",
            seconds=seconds,
            rounds=rounds,
            log=log,
        )
        for row, gate in zip(rows, gates, strict=True):
            row.update(_changes(gate, token, up.port))
            log(
                f"  {row['tenants']:,} tenants: started in {row['start_s']:.1f}s, RSS "
                f"{row['rss'] / 2**20:.0f} MB, {row['cpu_us']:.1f} µs/req, new tenant "
                f"{row['new_tenant_s']:.2f}s, policy withdrawn {row['withdrawn_s']:.2f}s / "
                f"restored {row['restored_s']:.2f}s, load {procs.load_average()}"
            )
    finally:
        for gate in gates:
            gate.stop()
        up.stop()
    return {"rows": against_smallest(rows)}


def against_smallest(rows: list[dict]) -> list[dict]:
    """Each row's CPU per request as a multiple of the smallest count's, and its memory per
    tenant over the smallest count's."""
    base = rows[0]
    for r in rows:
        r["cpu_x_smallest"] = r["cpu_us"] / base["cpu_us"] if base["cpu_us"] else 0.0
        extra = r["tenants"] - base["tenants"]
        r["kb_per_tenant"] = ((r["rss"] - base["rss"]) / extra / 1024) if extra else None
    return rows


def measure(
    rows: list[dict],
    gates: list[stack.Vgate],
    urls: list[str],
    token: str,
    kind: str,
    *,
    seconds: float,
    rounds: int,
    log: Callable[[str], None],
) -> None:
    """Each row's RSS, then CPU per cached-token request to its gateway's `url`, all
    gateways interleaved (one per count, so a noisy neighbour hits every count alike)."""
    targets = []
    for row, gate, url in zip(rows, gates, urls, strict=True):
        pids = gate.pids
        row["rss"] = procs.rss_bytes(pids)
        name = f"{kind}-{row.get('label') or row['tenants']}"  # a baseline row shares its count
        targets.append(Target(name, url, lambda pids=pids: pids, token=token))
    summaries = interleaved(
        targets, rounds=rounds, seconds=seconds, connections=50, warmup=min(2.0, seconds), log=log
    )
    for row, target in zip(rows, targets, strict=True):
        summary = summaries[target.name]
        row.update(
            cpu_us=summary.cpu_us, user_us=summary.user_us, rps=summary.rps, errors=summary.errors
        )


def _changes(gate: stack.Vgate, token: str, upstream_port: int) -> dict[str, float]:
    """How long a new tenant, a withdrawn grant and a restored one take to reach every
    worker of `gate`."""
    policies = gate.workdir / f"policies-{gate.name}"
    path = f"/clusters/t-new{stack.LIST_PATH}"
    config = yaml.safe_load(gate.config_file.read_text())
    config["tenants"].append(
        {
            "name": "t-new",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "token_file": "tenant.token",
        }
    )
    t0 = time.monotonic()
    _write(gate.config_file, config)
    new_tenant = time.monotonic() - t0 + until_status(gate.port, path, token, 200)
    denied = {"tenant": "*", "roles": {"view": {"groups": ["oidc:nobody-has-this"]}}}
    t0 = time.monotonic()
    _write(policies / "all.yaml", denied)
    withdrawn = time.monotonic() - t0 + until_status(gate.port, path, token, 403)
    t0 = time.monotonic()
    _write(policies / "all.yaml", GRANT)
    restored = time.monotonic() - t0 + until_status(gate.port, path, token, 200)
    return {"new_tenant_s": new_tenant, "withdrawn_s": withdrawn, "restored_s": restored}


def table(result: dict) -> list[str]:
    out = [
        "| tenants | start-up s | RSS MB (master + 2 workers) | KB per tenant | req/s "
        "| CPU µs/req | of which user | x the smallest | new tenant answers after s "
        "| policy withdrawn after s | restored after s | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        kb = "—" if r["kb_per_tenant"] is None else f"{r['kb_per_tenant']:.1f}"
        out.append(
            f"| {r['tenants']:,} | {r['start_s']:.1f} | {r['rss'] / 2**20:.0f} | {kb} | "
            f"{r['rps']:,.0f} | {r['cpu_us']:.1f} | {r['user_us']:.1f} | "
            f"{r['cpu_x_smallest']:.2f} | {r['new_tenant_s']:.2f} | "
            f"{r['withdrawn_s']:.2f} | {r['restored_s']:.2f} | {r['errors']} |"
        )
    out += [
        "",
        "One gateway per count, measured interleaved; a change counts as arrived when "
        f"{IN_A_ROW} requests in a row, each on a new connection, get the new answer "
        f"(`reload.poll_seconds` is 1 s). Target: CPU per request within "
        f"{TARGET_CPU_SPREAD:.0%} of the smallest count's.",
    ]
    return out
