"""Tenants at scale, the lifecycle's kind: one vgate (`workers: 2`, both on the proxy core,
`lifecycle.manage: false`: routes only) per count over a SQLite tenant store holding 10,
1,000 or 10,000 tenants, **half of them paused**; the running half routes to the bench's
static upstream, and each tenant's stored admin group (the bench token's) grants
`cluster-admin`. All gateways run at once and are measured interleaved:

- start-up: from the process start until `/readyz` answers 200 and a request to the first
  tenant is answered 200 (every worker has read the store);
- memory: the RSS of the master and both workers, and per tenant against the smallest count;
- CPU per cached-token request to one running tenant (closed loop);
- a new tenant: the time from its record (with a route) being committed until 20 requests
  in a row, each on a new connection, are answered 200; a paused tenant: the same until
  20 in a row are refused with 503;
- idle CPU under store churn: the gateway's CPU over 10 s while another process commits
  what a lifecycle manager does once a second (a lease renewal and one tenant's activity),
  which every worker notices through the store's revision.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.lifecycle.model import Desired, Phase, RouteInfo, TenantSpec, TenantStatus
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from loadtests.bench import procs, stack
from loadtests.bench.issuer import GROUP, LocalIssuer
from loadtests.bench.tenants import COUNTS, against_smallest, measure, until_status

CHURN_SECONDS = 10.0
FIRST = "t00000"


def _fill(db: Path, count: int, upstream_port: int, token_file: Path) -> None:
    """`count` tenants, every odd one paused, written through the store."""
    running = RouteInfo(server=f"http://127.0.0.1:{upstream_port}", token_file=str(token_file))
    paused = running.model_copy(update={"paused": True})

    async def fill(store: SQLiteTenantStore) -> None:
        for i in range(count):
            pause = i % 2 == 1
            await _put(store, f"t{i:05d}", paused if pause else running, pause)

    _with_store(db, fill)


async def _put(store: SQLiteTenantStore, name: str, route: RouteInfo, paused: bool) -> None:
    spec = TenantSpec(
        name=name,
        admin_groups=[f"oidc:{GROUP}"],
        desired=Desired.paused if paused else Desired.running,
    )
    record = await store.create(spec)
    status = TenantStatus(phase=Phase.paused if paused else Phase.ready, route=route)
    await store.update_status(name, status, record.version)


def _with_store(db: Path, use: Callable[[SQLiteTenantStore], Awaitable[None]]) -> None:
    """Run `use` on the store at `db` (its own connection, as another process would have)."""

    async def main() -> None:
        store = SQLiteTenantStore(db)
        try:
            await use(store)
        finally:
            await store.close()

    asyncio.run(main())


def _churn(db: Path, seconds: float) -> None:
    """What a lifecycle manager commits once a second: its lease, one tenant's activity."""

    async def churn(store: SQLiteTenantStore) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await store.acquire_lease("lifecycle-manager", "bench", 15.0)
            await store.record_activity({FIRST: time.time()})
            await asyncio.sleep(1.0)

    _with_store(db, churn)


def run(
    work: Path,
    *,
    seconds: float,
    rounds: int,
    counts: tuple[int, ...] = COUNTS,
    baseline: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """One gateway per count; with `baseline` (another checkout, `--baseline`) one more at
    the largest count running that checkout's code, measured interleaved with the others."""
    port = procs.free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    up = stack.static_upstream(work, issuer, procs.load_cpu(), port).start()
    token = issuer.token(10**9)
    token_file = work / "tenant.token"
    token_file.write_text("bench-tenant-credential\n")
    gates: list[stack.Vgate] = []
    rows = []
    try:
        runs: list[tuple[int, Path | None]] = [(count, None) for count in counts]
        if baseline is not None:
            runs.append((max(counts), baseline))
        for count, checkout in runs:
            name = f"vgate-lifecycle-{count}" + ("-baseline" if checkout else "")
            db = work / f"{name}.db"
            db.unlink(missing_ok=True)
            t0 = time.monotonic()
            _fill(db, count, up.port, token_file)
            log(f"  {count:,} lifecycle tenants written in {time.monotonic() - t0:.1f}s")
            gate = stack.Vgate(
                work,
                issuer.issuer,
                up.port,
                procs.proxy_cpu(),
                name=name,
                workers=2,
                checkout=checkout or stack.GATEWAY_CHECKOUT,
                extra={
                    "tenants": [],
                    "lifecycle": {"store": str(db), "manage": False, "provisioner": "local"},
                },
            )
            t0 = time.monotonic()
            gate.start(timeout=300)
            until_status(gate.port, f"/clusters/{FIRST}{stack.LIST_PATH}", token, 200)
            row = {"tenants": count, "db": db, "start_s": time.monotonic() - t0}
            if checkout is not None:
                row["label"] = f"{count:,} (baseline: {checkout.name})"
            rows.append(row)
            gates.append(gate)
        time.sleep(1.0)
        first = f"/clusters/{FIRST}{stack.LIST_PATH}"
        urls = [f"http://127.0.0.1:{gate.port}{first}" for gate in gates]
        measure(rows, gates, urls, token, "lifecycle", seconds=seconds, rounds=rounds, log=log)
        for row, gate in zip(rows, gates, strict=True):
            row.update(_changes(gate, row["db"], token, up.port, token_file))
            row["churn_cpu_s"] = _idle_cpu(gate, row["db"])
            log(
                f"  {row['tenants']:,} lifecycle tenants: started in {row['start_s']:.1f}s, "
                f"RSS {row['rss'] / 2**20:.0f} MB, {row['cpu_us']:.1f} µs/req, new tenant "
                f"{row['new_tenant_s']:.2f}s, paused {row['paused_s']:.2f}s, idle CPU under "
                f"churn {row['churn_cpu_s'] / CHURN_SECONDS:.1%} of a core, "
                f"load {procs.load_average()}"
            )
    finally:
        for gate in gates:
            gate.stop()
        up.stop()
    for r in rows:
        r.pop("db")
    return {"rows": against_smallest(rows)}


def _changes(
    gate: stack.Vgate, db: Path, token: str, upstream_port: int, token_file: Path
) -> dict[str, float]:
    """How long a new running tenant and a newly paused one take to reach every worker."""
    route = RouteInfo(server=f"http://127.0.0.1:{upstream_port}", token_file=str(token_file))
    path = f"/clusters/t-new{stack.LIST_PATH}"
    took: dict[str, float] = {}

    async def change(store: SQLiteTenantStore) -> None:
        t0 = time.monotonic()
        await _put(store, "t-new", route, paused=False)
        took["new_tenant_s"] = time.monotonic() - t0 + until_status(gate.port, path, token, 200)
        t0 = time.monotonic()
        record = await store.get("t-new")
        paused = record.status.model_copy(
            update={"phase": Phase.paused, "route": route.model_copy(update={"paused": True})}
        )
        await store.update_status("t-new", paused, record.version)
        took["paused_s"] = time.monotonic() - t0 + until_status(gate.port, path, token, 503)

    _with_store(db, change)
    return took


def _idle_cpu(gate: stack.Vgate, db: Path) -> float:
    """CPU seconds of the whole gateway over `CHURN_SECONDS` of store churn, no requests."""
    pids = gate.pids
    before = procs.cpu_seconds(pids)
    _churn(db, CHURN_SECONDS)
    return procs.cpu_seconds(pids) - before


def table(result: dict) -> list[str]:
    out = [
        "| lifecycle tenants (half paused) | start-up s | RSS MB (master + 2 workers) "
        "| KB per tenant | req/s | CPU µs/req | x the smallest | new tenant answers after s "
        "| paused after s | idle CPU under store churn (% of a core) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        kb = "—" if r["kb_per_tenant"] is None else f"{r['kb_per_tenant']:.1f}"
        out.append(
            f"| {r.get('label') or format(r['tenants'], ',')} | {r['start_s']:.1f} | "
            f"{r['rss'] / 2**20:.0f} | {kb} | "
            f"{r['rps']:,.0f} | {r['cpu_us']:.1f} | {r['cpu_x_smallest']:.2f} | "
            f"{r['new_tenant_s']:.2f} | {r['paused_s']:.2f} | "
            f"{100 * r['churn_cpu_s'] / CHURN_SECONDS:.1f} | {r['errors']} |"
        )
    out += [
        "",
        "`lifecycle.manage: false` (routes only) over a SQLite store; the route sync polls the "
        "store's revision every 0.5 s. Store churn: a lease renewal and one tenant's activity "
        "committed once a second by another process, no requests.",
    ]
    return out
