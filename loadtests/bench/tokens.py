"""What a never-seen token costs: `Authenticator.authenticate`, CPU time per token, for an
RS256 and an ES256 issuer (discovery and JWKS fetched from the bench's static upstream
first, as vgate does). Next to it, for the same tokens and key: PyJWT's `jwt.decode` with
the options the verify step used before `gateway.authn.jws`, and the signature check alone
(the floor). Measured in a process of its own that runs the gateway build under test
(`stack.GATEWAY_CHECKOUT`: the compiled copy unless `--build interpreted`), pinned to the
proxy core; interleaved rounds, medians over rounds."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from gateway.authn import Authenticator, jws
from gateway.config.model import OIDC, Issuer
from loadtests.bench import procs, stack
from loadtests.bench.issuer import AUDIENCE, LocalIssuer

ALGORITHMS = ("RS256", "ES256")
TARGET_US = 50.0


def run(work: Path, *, count: int, rounds: int, log: Callable[[str], None] = print) -> dict:
    """`rounds` x `count` fresh tokens per algorithm; µs of CPU per token for each way."""
    rows: dict[str, dict[str, float]] = {}
    build = ""
    for alg in ALGORITHMS:
        port = procs.free_port()
        issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer", alg)
        workdir = work / f"tokens-{alg}"
        workdir.mkdir(exist_ok=True)
        up = stack.static_upstream(workdir, issuer, procs.load_cpu(), port).start()
        try:
            tokens = workdir / "tokens.txt"
            tokens.write_text("\n".join(issuer.mint(count * rounds)) + "\n")
            public = workdir / "public.pem"
            public.write_bytes(
                issuer.key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
            measured = _in_child(issuer, tokens, public, count, rounds)
            rows[alg], build = measured["row"], measured["build"]
        finally:
            up.stop()
        r = rows[alg]
        log(
            f"  {alg}: authenticate {r['authenticate']:.1f} µs/token, jwt.decode "
            f"{r['jwt_decode']:.1f}, signature alone {r['signature']:.1f} ({build}), load "
            f"{procs.load_average()}"
        )
    return {"count": count, "rounds": rounds, "rows": rows, "build": build}


def _in_child(issuer: LocalIssuer, tokens: Path, public: Path, count: int, rounds: int) -> dict:
    """`main` below, run by the gateway build under test; its JSON answer."""
    checkout = stack.GATEWAY_CHECKOUT
    cpu = procs.proxy_cpu()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench.tokens",
            *("--issuer", issuer.issuer, "--alg", issuer.alg),
            *("--tokens", str(tokens), "--public-key", str(public)),
            *("--count", str(count), "--rounds", str(rounds)),
            *(("--cpu", ",".join(map(str, sorted(cpu)))) if cpu else ()),
        ],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"token measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    """The child: measure, print {"row": …, "build": …} as the last line."""
    from gateway import build_info

    parser = argparse.ArgumentParser(prog="python -m loadtests.bench.tokens")
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--alg", choices=ALGORITHMS, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--public-key", type=Path, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--cpu", default="")
    args = parser.parse_args(argv)
    if args.cpu:
        os.sched_setaffinity(0, {int(c) for c in args.cpu.split(",")})
    key = serialization.load_pem_public_key(args.public_key.read_bytes())
    tokens = args.tokens.read_text().split()
    row = asyncio.run(_measure(args.issuer, args.alg, key, tokens, args.count, args.rounds))
    print(json.dumps({"row": row, "build": f"request path {build_info.request_path_build()}"}))


async def _measure(
    issuer: str, alg: str, key: object, tokens: list[str], count: int, rounds: int
) -> dict[str, float]:
    auth = Authenticator(
        OIDC(
            issuers=[
                Issuer(
                    issuer=issuer,
                    audiences=[AUDIENCE],
                    username_claim="email",
                    username_prefix="oidc:",
                    groups_claim="groups",
                    groups_prefix="oidc:",
                    algorithms=[alg],
                )
            ],
            token_cache_size=count * rounds + 1,
        )
    )
    await auth.start()
    try:
        if not auth.ready:
            raise RuntimeError(f"{alg}: the issuer's keys did not load")
        options = {"require": ["iss", "aud", "exp", "iat", "sub"], "verify_iat": True}
        samples: dict[str, list[float]] = {"authenticate": [], "jwt_decode": [], "signature": []}
        for r in range(rounds):
            chunk = tokens[r * count : (r + 1) * count]
            t0 = time.process_time()
            for token in chunk:
                await auth.authenticate(token)
            samples["authenticate"].append(time.process_time() - t0)
            t0 = time.process_time()
            for token in chunk:
                jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=[AUDIENCE],
                    issuer=issuer,
                    options=options,
                )
            samples["jwt_decode"].append(time.process_time() - t0)
            parsed = [jws.parse(token) for token in chunk]
            t0 = time.process_time()
            for p in parsed:
                jws.signature_valid(p, alg, key)
            samples["signature"].append(time.process_time() - t0)
        return {k: statistics.median(v) / count * 1e6 for k, v in samples.items()}
    finally:
        await auth.close()


def table(result: dict) -> list[str]:
    rows = [
        "| issuer key | vgate: authenticate µs/token | PyJWT jwt.decode µs/token | "
        "signature check alone µs | target |",
        "|---|---:|---:|---:|---|",
    ]
    for alg, r in result["rows"].items():
        rows.append(
            f"| {alg} | {r['authenticate']:.1f} | {r['jwt_decode']:.1f} | "
            f"{r['signature']:.1f} | ≤ {TARGET_US:.0f} µs |"
        )
    rows += [
        "",
        f"{result['count']:,} never-seen tokens per round, {result['rounds']} round(s), "
        f"in a process of its own ({result.get('build', 'request path interpreted')}) "
        "pinned to the proxy core; `authenticate` is the whole "
        "fresh-token step (parse, key lookup, signature, claims, name checks, cache "
        "insert); `jwt.decode` is what the verify step called before.",
    ]
    return rows


if __name__ == "__main__":
    main()
