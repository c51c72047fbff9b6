"""`python -m loadtests.run [--scenario mixed] [--users 20] [--time 30s] [--out DIR]`

Starts a local stack on 127.0.0.1 — two fake tenant API servers (tests/fakekube), the
real dev OpenID Provider (npm oidc-provider, deploy/dev-idp) and vgate (1 worker) —
logs the users in at the IdP (authorization code + PKCE through its login forms), runs
one bounded headless locust scenario and writes `summary.csv` and `summary.md` (rps,
p50/p95/p99, errors per request type) to DIR. Stops everything it started.
Exit code: 0 when no request failed, 1 otherwise, 2 when a tool is missing.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")

SCENARIOS = {
    "kubectl": ["KubectlUser"],
    "controllers": ["ControllerUser"],
    "refresh-storm": ["RefreshStorm"],
    "denied": ["DeniedUser"],
    "mixed": ["KubectlUser", "ControllerUser", "RefreshStorm", "DeniedUser"],
}
USERS = {
    "alice": {"email": "alice@example.com", "name": "Alice", "groups": ["tenant1-admins"]},
    "bob": {"email": "bob@example.com", "name": "Bob", "groups": ["developers"]},
    "carol": {"email": "carol@example.com", "name": "Carol", "groups": ["tenant2-admins"]},
    "mallory": {"email": "mallory@example.com", "name": "Mallory", "groups": ["nobody"]},
}
POLICIES = {
    "tenant1": {
        "cluster-admin": {"groups": ["oidc:tenant1-admins"]},
        "view": {"groups": ["oidc:developers"]},
    },
    "tenant2": {
        "cluster-admin": {"groups": ["oidc:tenant2-admins"]},
        "view": {"groups": ["oidc:developers"]},
    },
}
# (tenant, user, role) — several tenants, different roles, and users with no role at all
IDENTITIES = [
    ("tenant1", "alice", "cluster-admin"),
    ("tenant2", "carol", "cluster-admin"),
    ("tenant1", "bob", "view"),
    ("tenant2", "bob", "view"),
    ("tenant1", "mallory", "none"),
    ("tenant1", "carol", "none"),
]


def missing_tools() -> str | None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed: the dev OpenID Provider needs them"
    if importlib.util.find_spec("locust") is None:  # importing it would monkey-patch
        return "locust is not installed (pip install -e '.[loadtests]')"
    return None


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="mixed")
    p.add_argument("--users", type=int, default=20, help="concurrent locust users")
    p.add_argument("--time", default="30s", help="run time (locust syntax: 20s, 2m)")
    p.add_argument("--out", type=Path, default=Path("loadtest-results"))
    p.add_argument(
        "--tokens", type=Path, help="use this tokens file instead of logging in at the dev IdP"
    )
    return p.parse_args(argv)


def _login_all(idp, users: int) -> list[dict]:
    """One login per locust user (refresh tokens rotate, so users must not share them)."""
    out = []
    per = max(1, -(-users // len(IDENTITIES)))
    for tenant, user, role in IDENTITIES:
        for _ in range(per):
            t = idp.login(user)
            out.append(
                {
                    "tenant": tenant,
                    "user": user,
                    "role": role,
                    "token": t.id_token,
                    "refresh_token": t.refresh_token,
                }
            )
    return out


def _start_gateway(work: Path, issuer: str, tenants: dict) -> tuple[subprocess.Popen, int]:
    from loadtests.bench import procs
    from loadtests.bench.stack import http_status

    policies = work / "policies"
    policies.mkdir(exist_ok=True)
    for tenant, roles in POLICIES.items():
        (policies / f"{tenant}.yaml").write_text(yaml.safe_dump({"tenant": tenant, "roles": roles}))
    port = procs.free_port()
    config = work / "vgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": port},
                "workers": 1,
                "routing": {"path_prefix": "/clusters"},
                "oidc": {
                    "issuers": [
                        {
                            "issuer": issuer,
                            "audiences": ["vgate"],
                            "username_claim": "email",
                            "username_prefix": "oidc:",
                            "groups_claim": "groups",
                            "groups_prefix": "oidc:",
                        }
                    ]
                },
                "policies": str(policies),
                "tenants": [
                    {"name": n, "upstream": url, "token_file": str(tok)}
                    for n, (url, tok) in tenants.items()
                ],
                "audit": {"file": str(work / "audit.log")},
                "limits": {"shutdown_grace_seconds": 2},
            }
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(config),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stderr=open(work / "vgate.log", "ab"),  # noqa: SIM115
        preexec_fn=os.setpgrp,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vgate exited: see {work / 'vgate.log'}")
        if http_status(port, "/readyz") == 200:
            return proc, port
        time.sleep(0.1)
    raise RuntimeError("vgate did not become ready")


def summarize(stats_csv: Path, out: Path, title: str) -> tuple[int, list[dict]]:
    """Write summary.csv and summary.md from locust's *_stats.csv; return (failures, rows)."""
    rows = []
    with stats_csv.open(newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "type": r["Type"],
                    "name": r["Name"],
                    "requests": int(r["Request Count"]),
                    "failures": int(r["Failure Count"]),
                    "rps": float(r["Requests/s"]),
                    "p50_ms": r["50%"],
                    "p95_ms": r["95%"],
                    "p99_ms": r["99%"],
                    "max_ms": round(float(r["Max Response Time"] or 0), 1),
                }
            )
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["name"])
        w.writeheader()
        w.writerows(rows)
    lines = [
        f"## {title}",
        "",
        "| type | name | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['type']} | {r['name']} | {r['requests']} | {r['failures']} | "
            f"{r['rps']:.1f} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    return (total["failures"] if total else 0), rows


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    why = missing_tools()
    if why:
        print(f"loadtests: cannot run: {why}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO_ROOT))
    from tests.fakekube import Caller, FakeKube
    from tests.support.oidc import OIDCProvider

    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vgate-locust-"))
    kubes: list[FakeKube] = []
    idp = gateway = None
    try:
        tenants = {}
        for name in POLICIES:
            cred = f"gateway-credential-{name}"
            kube = FakeKube(
                name=name,
                tokens={
                    cred: Caller(
                        "system:serviceaccount:vgate:gateway", ("system:serviceaccounts",), True
                    )
                },
                bookmark_interval=2.0,
            ).start()
            kubes.append(kube)
            (work / f"{name}.token").write_text(cred + "\n")
            tenants[name] = (kube.url, work / f"{name}.token")
        idp = OIDCProvider(work / "idp", users=USERS).start()
        gateway, port = _start_gateway(work, idp.issuer, tenants)
        tokens_file = args.tokens
        if tokens_file is None:
            t0 = time.monotonic()
            identities = _login_all(idp, args.users)
            tokens_file = work / "tokens.json"
            tokens_file.write_text(
                json.dumps(
                    {
                        "identities": identities,
                        "idp": {
                            "token_endpoint": idp.discovery()["token_endpoint"],
                            "client_id": idp.client_id,
                        },
                    }
                )
            )
            print(
                f"loadtests: {len(identities)} logins at the dev IdP in "
                f"{time.monotonic() - t0:.1f}s",
                flush=True,
            )
        prefix = args.out / args.scenario
        argv_l = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "-u",
            str(args.users),
            "-r",
            str(args.users),
            "-t",
            args.time,
            "--stop-timeout",
            "15",
            "--only-summary",
            "--csv",
            str(prefix),
            "--host",
            f"http://127.0.0.1:{port}",
            "--loglevel",
            "WARNING",
            *SCENARIOS[args.scenario],
        ]
        print("loadtests: " + " ".join(argv_l[1:]), flush=True)
        proc = subprocess.run(
            argv_l,
            cwd=REPO_ROOT,
            timeout=_seconds(args.time) + 120,
            env={**os.environ, "VGATE_TOKENS": str(tokens_file), "PYTHONPATH": str(REPO_ROOT)},
        )
        failures, rows = summarize(
            Path(f"{prefix}_stats.csv"),
            args.out,
            f"Scenario {args.scenario}: {args.users} users for {args.time} "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        )
        print((args.out / "summary.md").read_text())
        print(f"loadtests: summary in {args.out / 'summary.csv'} and {args.out / 'summary.md'}")
        if proc.returncode not in (0, 1):
            print(f"loadtests: locust exited with {proc.returncode}", file=sys.stderr)
            return 1
        return 1 if failures or not rows else 0
    finally:
        if gateway is not None:
            from loadtests.bench import procs

            procs.stop(gateway)
        if idp is not None:
            idp.stop()
        for kube in kubes:
            kube.stop()
        shutil.rmtree(work, ignore_errors=True)


def _seconds(spec: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return int(float(spec[:-1]) * units[spec[-1]]) if spec[-1] in units else int(spec)


if __name__ == "__main__":
    sys.exit(main())
