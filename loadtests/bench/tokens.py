"""What a never-seen token costs: `Authenticator.authenticate` in this process, CPU time per
token, for an RS256 and an ES256 issuer (discovery and JWKS fetched from the bench's static
upstream first, as vgate does). Next to it, for the same tokens and key: PyJWT's `jwt.decode`
with the options the verify step used before `gateway.authn.jws`, and the signature check
alone (the floor). Interleaved rounds, pinned to the proxy core; medians over rounds."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jwt

from gateway.authn import Authenticator, jws
from gateway.config.model import OIDC, Issuer
from loadtests.bench import procs, stack
from loadtests.bench.issuer import AUDIENCE, LocalIssuer

ALGORITHMS = ("RS256", "ES256")
TARGET_US = 50.0


def run(work: Path, *, count: int, rounds: int, log: Callable[[str], None] = print) -> dict:
    """`rounds` x `count` fresh tokens per algorithm; µs of CPU per token for each way."""
    rows: dict[str, dict[str, float]] = {}
    before = os.sched_getaffinity(0)
    for alg in ALGORITHMS:
        port = procs.free_port()
        issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer", alg)
        workdir = work / f"tokens-{alg}"
        workdir.mkdir(exist_ok=True)
        up = stack.static_upstream(workdir, issuer, procs.load_cpu(), port).start()
        try:
            tokens = issuer.mint(count * rounds)
            cpu = procs.proxy_cpu()
            if cpu:
                os.sched_setaffinity(0, cpu)
            rows[alg] = asyncio.run(_measure(issuer, tokens, count, rounds))
        finally:
            os.sched_setaffinity(0, before)
            up.stop()
        r = rows[alg]
        log(
            f"  {alg}: authenticate {r['authenticate']:.1f} µs/token, jwt.decode "
            f"{r['jwt_decode']:.1f}, signature alone {r['signature']:.1f}, load "
            f"{procs.load_average()}"
        )
    return {"count": count, "rounds": rounds, "rows": rows}


async def _measure(
    issuer: LocalIssuer, tokens: list[str], count: int, rounds: int
) -> dict[str, float]:
    alg = issuer.alg
    auth = Authenticator(
        OIDC(
            issuers=[
                Issuer(
                    issuer=issuer.issuer,
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
        key = issuer.key.public_key()
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
                    issuer=issuer.issuer,
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
        "in the bench process pinned to the proxy core; `authenticate` is the whole "
        "fresh-token step (parse, key lookup, signature, claims, name checks, cache "
        "insert); `jwt.decode` is what the verify step called before.",
    ]
    return rows
