"""Run wrk (the load generator) pinned to its own core, and read its results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtests.bench import procs

SCRIPT = Path(__file__).with_name("wrk.lua")


def wrk_binary() -> str | None:
    return shutil.which("wrk")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    non_2xx: int
    p50_us: float
    p90_us: float
    p99_us: float
    p999_us: float
    max_us: float
    reused: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    token: str | None = None,
    token_file: Path | None = None,
    pace_ms: int = 0,
    threads: int = 1,
    headers: list[tuple[str, str]] | None = None,
) -> WrkResult:
    """One bounded wrk run. `token`: a fixed bearer token; `token_file`: one token per
    request, cycled; `pace_ms`: each connection waits that long before each request;
    `headers`: more request header lines, sent as they are (a name may repeat)."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed")
    argv = [
        binary,
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(SCRIPT),
    ]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    raw = "-"
    if headers:
        with tempfile.NamedTemporaryFile("w", suffix=".headers", delete=False) as f:
            f.write("".join(f"{name}: {value}\n" for name, value in headers))
            raw = f.name
    argv += [url, "--", str(token_file) if token_file else "-", str(pace_ms), str(threads), raw]
    env = {
        **os.environ,
        "WRK_TOKENS": "1" if token_file else "0",
        "WRK_PACE": "1" if pace_ms else "0",
        "WRK_RAW": "1" if headers else "0",
    }
    try:
        out = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 30,
            preexec_fn=procs.preexec(procs.load_cpu()),
        )
    finally:
        if raw != "-":
            os.unlink(raw)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip() or out.stdout}")
    data = json.loads(line[6:])
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
        non_2xx=data["status"],
        p50_us=data["p50"],
        p90_us=data["p90"],
        p99_us=data["p99"],
        p999_us=data["p999"],
        max_us=data["max"],
        reused=data["reused"],
    )
