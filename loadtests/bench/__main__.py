"""`python -m loadtests.bench [--quick] [--mode all|requests|tls|kube|tenants|tokens|watches]`

Starts a static upstream (nginx, plain and TLS), nginx as a reverse proxy and vgate (1 worker,
a real OIDC issuer, policies) on 127.0.0.1, plus a real kube-apiserver when its binaries are
there, measures them interleaved, prints the tables, writes them as Markdown (and JSON) and
stops everything it started. Bounded in time (every mode takes about 20 minutes on 2 cores;
--quick about 8 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from loadtests.bench import (
    compiled,
    directory,
    fairness,
    kube,
    lifecycle_tenants,
    procs,
    report,
    stack,
    tenants,
    tokens,
    watch_h2,
    watch_scale,
    watches,
    wrk,
)
from loadtests.bench.issuer import LocalIssuer, write_tokens
from loadtests.bench.throughput import Target, interleaved


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--mode",
        choices=["all", "requests", "tls", "tokens", "kube", "tenants", "watches"],
        default="all",
        help="tls: only the plain and TLS rows of the request "
        "mode; tokens: CPU per never-seen token (RS256, ES256) in this process; "
        "kube: against a real kube-apiserver (needs $KUBEBUILDER_ASSETS); "
        "tenants: 10, 1,000 and 10,000 tenants",
    )
    p.add_argument("--quick", action="store_true", help="1 round, short runs, fewer watches")
    p.add_argument("--smoke", action="store_true", help="CI: seconds-long, checks for errors")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=float, help="seconds per measured run (default 8)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument(
        "--watches", default=None, help="comma-separated watch counts (default 1000,5000,10000)"
    )
    p.add_argument(
        "--watch-workers",
        type=int,
        default=0,
        help="watches at scale: each --watches count straight to TLS upstreams, through "
        "nginx with this many worker processes and through vgate with `workers:` this many, "
        "side by side (e.g. --mode watches --watches 50000 --watch-workers 4)",
    )
    p.add_argument(
        "--upstream-h2-streams",
        type=int,
        default=watch_h2.MAX_STREAMS,
        help="watches at scale: SETTINGS_MAX_CONCURRENT_STREAMS of the TLS upstreams' HTTP/2 "
        f"connections (default {watch_h2.MAX_STREAMS}, a kube-apiserver's); 0: they offer "
        "ALPN http/1.1 only",
    )
    p.add_argument(
        "--build",
        choices=("compiled", "interpreted"),
        default="compiled",
        help="how vgate (and a --baseline checkout) runs: `compiled` (default), the request "
        "path compiled by mypyc as the image ships it (VGATE_COMPILE=1; built once per source, "
        "~70 s, cached), or `interpreted`, the plain Python of `pip install -e .`",
    )
    p.add_argument("--out", type=Path, help="write the Markdown report here")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    p.add_argument("--pool", type=int, help="fresh tokens to mint (must cover one round)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="CHECKOUT",
        help="also measure vgate from another checkout (e.g. a `git worktree` of "
        "main) as target vgate-baseline, interleaved with this one (requests, kube; "
        "tenants: one more lifecycle gateway at the largest count)",
    )
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(rounds=1, seconds=1.0, watches="200", warmup=0, pool=16000)
    elif args.quick:
        defaults = dict(rounds=1, seconds=4.0, watches="1000,5000", warmup=1.0, pool=64000)
    else:
        defaults = dict(rounds=3, seconds=8.0, watches="1000,5000,10000", warmup=2.0, pool=128000)
    args.rounds = args.rounds or defaults["rounds"]
    args.seconds = args.seconds or defaults["seconds"]
    args.watches = [int(x) for x in (args.watches or defaults["watches"]).split(",") if x]
    args.warmup = defaults["warmup"]
    args.pool = args.pool or defaults["pool"]
    return args


def missing_tools() -> str | None:
    """Why the bench cannot run here (one line), or None."""
    if stack.nginx_binary() is None:
        return "nginx is not installed (apt-get install nginx)"
    if wrk.wrk_binary() is None:
        return "wrk is not installed (apt-get install wrk)"
    return None


def log(msg: str) -> None:
    print(msg, flush=True)


class TlsStack:
    """nginx and vgate with TLS to the upstream (`-tls-up`) and on both hops (`-tls`)."""

    def __init__(self, work: Path, issuer: LocalIssuer, up: stack.Nginx) -> None:
        pki = stack.certificates(work)
        cpu = procs.proxy_cpu()
        self.up = up
        self.proxy = stack.nginx_proxy(
            work, up.tls_port, cpu, name="proxy-tls", upstream_ca=pki.ca_file, tls=pki
        )
        # the same, writing an access line per request as vgate writes its audit line
        self.proxy_logged = stack.nginx_proxy(
            work,
            up.tls_port,
            cpu,
            name="proxy-tls-logged",
            upstream_ca=pki.ca_file,
            tls=pki,
            access_log=True,
        )
        self.gate_up = stack.Vgate(
            work, issuer.issuer, up.tls_port, cpu, name="vgate-tls-up", upstream_ca=pki.ca_file
        )
        self.gate = stack.Vgate(
            work,
            issuer.issuer,
            up.tls_port,
            cpu,
            name="vgate-tls",
            upstream_ca=pki.ca_file,
            tls=pki,
        )

    def start(self) -> TlsStack:
        self.proxy.start()
        self.proxy_logged.start()
        self.gate_up.start()
        self.gate.start()
        return self

    def stop(self) -> None:
        self.gate.stop()
        self.gate_up.stop()
        self.proxy_logged.stop()
        self.proxy.stop()

    def targets(self, token: str) -> list[Target]:
        path, proxy, logged, up = stack.LIST_PATH, self.proxy, self.proxy_logged, self.up
        gate_up_pids, gate_pids = self.gate_up.pids, self.gate.pids
        return [
            Target("direct-tls", f"https://127.0.0.1:{up.tls_port}{path}", lambda: up.pids),
            Target("nginx-tls-up", f"http://127.0.0.1:{proxy.port}{path}", lambda: proxy.pids),
            Target(
                "vgate-tls-up",
                self.gate_up.base + path,
                lambda: gate_up_pids,
                token=token,
                nginx="nginx-tls-up",
            ),
            Target(
                "nginx-tls",
                f"https://127.0.0.1:{proxy.tls_port}{path}",
                lambda: proxy.pids,
                direct="direct-tls",
            ),
            Target(
                "nginx-tls-logged",
                f"https://127.0.0.1:{logged.tls_port}{path}",
                lambda: logged.pids,
                direct="direct-tls",
            ),
            Target(
                "vgate-tls",
                self.gate.base + path,
                lambda: gate_pids,
                token=token,
                direct="direct-tls",
                nginx="nginx-tls",
            ),
        ]


def half_rate(targets: list[Target], rmax: dict, name: str, args: argparse.Namespace) -> dict:
    """Latency of `targets` at half of `name`'s maximum rate (paced connections)."""
    half = rmax[name].rps / 2
    conns = max(4, round(half * 0.010))  # each connection paced to ~10 ms
    pace = max(1, round(conns * 1000 / half)) if half > 0 else 10
    log(
        f"latency at half of {name}'s max rate: target {half:.0f} req/s = {conns} "
        f"connections x 1 request per {pace} ms, load {procs.load_average()}"
    )
    return {
        "rate": half,
        "rows": interleaved(
            targets,
            rounds=args.rounds,
            seconds=args.seconds,
            connections=conns,
            warmup=0,
            pace_ms={t.name: pace for t in targets},
            log=log,
        ),
    }


def run_requests(work: Path, args: argparse.Namespace, results: dict) -> None:
    """Max throughput (closed loop), latency at half of vgate's max rate, and one tenant's
    latency while another is flooded at 5x its rate limit; each for plain HTTP and with TLS
    to the upstream and on both hops. `--mode tls`: the plain and TLS rows only."""
    everything = args.mode != "tls"
    port = procs.free_port()  # the issuer's URL names the upstream that serves its documents
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    up = stack.static_upstream(
        work, issuer, procs.load_cpu(), port, tls=stack.certificates(work)
    ).start()
    proxy = stack.nginx_proxy(work, up.port, procs.proxy_cpu())
    gate = stack.Vgate(work, issuer.issuer, up.port, procs.proxy_cpu())
    tls = TlsStack(work, issuer, up)
    # fresh JWTs: a second vgate (same code and config), restarted before every round so
    # its token cache starts empty and one pool of never-seen tokens serves every round
    fresh = stack.Vgate(work, issuer.issuer, up.port, procs.proxy_cpu(), name="vgate-fresh")
    # two worker processes sharing the same core: CPU per request must not grow with them
    two = stack.Vgate(
        work, issuer.issuer, up.port, procs.proxy_cpu(), name="vgate-2-workers", workers=2
    )
    baseline = None
    if args.baseline is not None:
        baseline = stack.Vgate(
            work,
            issuer.issuer,
            up.port,
            procs.proxy_cpu(),
            name="vgate-baseline",
            checkout=args.baseline.resolve(),
        )
    ad: directory.BenchDirectory | None = None
    ad_gate: stack.Vgate | None = None
    try:
        why = directory.unavailable() if everything else "not in --mode tls"
        if why is None:
            try:
                t0 = time.monotonic()
                ad = directory.BenchDirectory(work).start()
                ad_gate = stack.Vgate(
                    work,
                    issuer.issuer,
                    up.port,
                    procs.proxy_cpu(),
                    name="vgate-ad",
                    roles=ad.roles(),
                    extra={"ldap": ad.vgate_ldap()},
                ).start()
                log(
                    f"Samba AD DC provisioned and seeded, vgate-ad started in "
                    f"{time.monotonic() - t0:.1f}s"
                )
            except Exception as exc:  # the other targets still run
                why = f"the Samba AD DC or its vgate did not start: {exc}"
        if why is not None:
            log(f"vgate-ad-groups: skipped: {why}")
        results["ad_groups_skipped"] = why
        proxy.start()
        gate.start()
        tls.start()
        if everything:
            two.start()
        if baseline is not None:
            baseline.start()
        cached = issuer.token(10**9)
        path = stack.LIST_PATH
        targets = [
            Target("direct", f"http://127.0.0.1:{up.port}{path}", lambda: up.pids),
            Target("nginx", f"http://127.0.0.1:{proxy.port}{path}", lambda: proxy.pids),
            Target("vgate-cached", gate.base + path, lambda: gate.pids, token=cached),
        ]
        if everything:
            t0 = time.monotonic()
            pool = write_tokens(work / "tokens.txt", issuer.mint(args.pool))
            log(f"minted {args.pool} distinct RS256 tokens in {time.monotonic() - t0:.1f}s")
            targets += [
                Target(
                    "vgate-fresh-jwt",
                    fresh.base + path,
                    lambda: fresh.pids,
                    token_files=[pool],
                    before=fresh.restart,
                ),
                Target(
                    "vgate-denied",
                    gate.base + path,
                    lambda: gate.pids,
                    token=issuer.token(10**9 + 1, groups=["no-role-here"]),
                    refused=True,
                ),
                Target("vgate-2-workers", two.base + path, lambda: two.pids, token=cached),
            ]
        if baseline is not None:
            base_pids = baseline.pids
            targets.insert(
                3, Target("vgate-baseline", baseline.base + path, lambda: base_pids, token=cached)
            )
        if ad_gate is not None:
            # no group in the token has a role: access comes from the cached AD group
            ad_pids = ad_gate.pids
            targets.append(
                Target(
                    "vgate-ad-groups",
                    ad_gate.base + path,
                    lambda: ad_pids,
                    token=issuer.token(10**9 + directory.USER_NUMBER, groups=["no-role-here"]),
                )
            )
        tls_targets = tls.targets(cached)
        targets += tls_targets
        log(
            f"max throughput: {args.rounds} round(s) x {len(targets)} targets x "
            f"{args.seconds:g}s, {args.connections} connections, load {procs.load_average()}"
        )
        rmax = interleaved(
            targets,
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            warmup=args.warmup,
            log=log,
        )
        results["max"] = rmax
        fixed = targets[: 4 if baseline is not None else 3]  # direct, nginx, vgate(-baseline)
        half = half_rate(fixed, rmax, "vgate-cached", args)
        results["half"], results["half_rate_target"] = half["rows"], half["rate"]
        by_name = {t.name: t for t in tls_targets}
        half = half_rate(
            [by_name[n] for n in ("direct-tls", "nginx-tls", "vgate-tls")], rmax, "vgate-tls", args
        )
        results["half_tls"], results["half_tls_rate_target"] = half["rows"], half["rate"]
        if not everything:
            return
        # a noisy neighbour: another tenant flooded at 5x its limit (its own vgate process)
        results["fairness"] = fairness.run(
            work,
            issuer,
            up.port,
            calm_rps=max(500.0, rmax["vgate-cached"].rps / 4),
            rounds=args.rounds,
            seconds=args.seconds,
            log=log,
        )
    finally:
        tls.stop()
        fresh.stop()
        gate.stop()
        if baseline is not None:
            baseline.stop()
        two.stop()
        if ad_gate is not None:
            ad_gate.stop()
        if ad is not None:
            ad.stop()
        proxy.stop()
        up.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    why = missing_tools()
    if why:
        print(f"bench: cannot run: {why}", file=sys.stderr)
        return 2
    procs.raise_nofile()
    if args.build == "compiled":
        stack.use_gateway(compiled.build(log=log))
        if args.baseline is not None:
            args.baseline = compiled.build(args.baseline.resolve(), log=log)
    work = Path(tempfile.mkdtemp(prefix="vgate-bench-"))
    work.chmod(0o755)
    started = time.monotonic()
    results: dict = {
        "machine": report.machine(args.build),
        "command": " ".join(["python -m loadtests.bench", *(argv or sys.argv[1:])]),
    }
    log(f"bench: work dir {work}; {results['machine']['summary']}")
    try:
        if args.mode in ("all", "requests", "tls"):
            run_requests(work, args, results)
        if args.mode in ("all", "kube"):
            why = kube.unavailable()
            if why is None:
                results["kube"] = kube.run(
                    work, rounds=args.rounds, seconds=args.seconds, baseline=args.baseline, log=log
                )
            else:
                log(f"real kube-apiserver rows: skipped: {why}")
                results["kube_skipped"] = why
        if args.mode in ("all", "tenants"):
            log(f"tenants at scale, load {procs.load_average()}")
            results["tenants"] = tenants.run(
                work,
                seconds=args.seconds,
                rounds=args.rounds,
                counts=(10, 100) if args.smoke else tenants.COUNTS,
                log=log,
            )
            log(f"lifecycle tenants at scale (half paused), load {procs.load_average()}")
            results["lifecycle_tenants"] = lifecycle_tenants.run(
                work,
                seconds=args.seconds,
                rounds=args.rounds,
                counts=(10, 100) if args.smoke else tenants.COUNTS,
                baseline=args.baseline,
                log=log,
            )
        if args.mode in ("all", "tokens"):
            log(f"never-seen tokens: {args.rounds} round(s), load {procs.load_average()}")
            results["tokens"] = tokens.run(
                work, count=200 if args.smoke else 2000, rounds=args.rounds, log=log
            )
        if args.mode == "watches" and args.watch_workers:
            log(f"watches at scale, load {procs.load_average()}")
            results["watch_scale"] = [
                watch_scale.run(
                    work,
                    n,
                    workers=args.watch_workers,
                    h2_streams=args.upstream_h2_streams,
                    seconds=args.seconds,
                    smoke=args.smoke,
                    log=log,
                )
                for n in args.watches
            ]
        elif args.mode in ("all", "watches"):
            results["watches"] = watches.run(
                work, args.watches, seconds=args.seconds, smoke=args.smoke, log=log
            )
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    text = report.markdown(results)
    print()
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(results), indent=2))
    return 1 if report.errors(results) else 0


if __name__ == "__main__":
    sys.exit(main())
