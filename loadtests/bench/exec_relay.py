"""`python -m loadtests.bench.exec_relay`: vgate's CPU per relayed MiB of `kubectl exec`
output — tunnelled as it is, recorded, bridged (a WebSocket client, a SPDY-only tenant),
and bridged and recorded.

A small exec upstream (asyncio, in this process, on the load core) answers WebSocket
(`v5.channel.k8s.io`) and SPDY/3.1 (`v4.channel.k8s.io`) exec upgrades by sending
`--mib` MiB of stdout in 32 KiB frames, then a Success status; on its second port it
refuses WebSocket like a kubelet before 1.30 (403), so vgate bridges. A WebSocket client
in this process reads every byte. vgate (1 worker, pinned to the proxy core) records to a
directory in the work dir (`best-effort`, so a row shows if recording fell behind instead
of failing). CPU is vgate's `utime + stime` from /proc over the MiB the client received.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gateway.streams import spdy, websocket
from loadtests.bench import procs
from loadtests.bench.issuer import GROUP, LocalIssuer
from loadtests.bench.stack import Vgate

CHUNK = 32 * 1024
SUCCESS = b'{"metadata":{},"status":"Success"}'
ROWS = (
    ("tunnel", "plain"),
    ("tunnel + recording", "rec"),
    ("bridged", "bridge"),
    ("bridged + recording", "bridgerec"),
)


class ExecUpstream:
    """Two ports: `both` takes WebSocket and SPDY, `spdy_only` refuses WebSocket (403)."""

    def __init__(self, mib: int) -> None:
        self.documents: dict[str, bytes] = {}  # path → body (the issuer's, once it exists)
        self.total = mib << 20
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for name in ("both", "spdy_only"):
            server = await asyncio.start_server(
                lambda r, w, n=name: self._serve(r, w, n == "spdy_only"), "127.0.0.1", 0
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for server in self._servers:
            server.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spdy_only: bool
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                upgrade = fields.get("upgrade", "").lower()
                if upgrade == "websocket" and not spdy_only:
                    await self._websocket(reader, writer, fields["sec-websocket-key"])
                    return
                if upgrade == "spdy/3.1":
                    await self._spdy(reader, writer)
                    return
                if upgrade:
                    writer.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
                    return
                body = self.documents.get(path.split("?")[0], b"{}")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str
    ) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"
            b"Sec-WebSocket-Accept: " + websocket.accept_key(key.encode()) + b"\r\n\r\n"
        )
        frame = websocket.encode(websocket.OP_BINARY, b"\x01" + b"o" * (CHUNK - 1), masked=False)
        for _ in range(self.total // (CHUNK - 1)):
            writer.write(frame)
            await writer.drain()
        writer.write(
            websocket.encode(websocket.OP_BINARY, b"\x03" + SUCCESS, masked=False)
            + websocket.encode(websocket.OP_CLOSE, websocket.close_payload(1000), masked=False)
        )
        await writer.drain()
        await reader.read(65536)  # the client's close

    async def _spdy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        frames, headers_in, headers_out = spdy.Reader(), spdy.HeaderReader(), spdy.HeaderWriter()
        streams: dict[str, int] = {}
        while not {"stdout", "error"} <= streams.keys():
            for frame in frames.feed(await reader.read(65536)):
                if isinstance(frame, spdy.Control) and frame.type == spdy.SYN_STREAM:
                    kind = headers_in.read(spdy.header_block(frame))["streamtype"][0]
                    streams[kind] = spdy.stream_id_of(frame.body)
                    writer.write(spdy.syn_reply(streams[kind], headers_out.block({})))
        frame = spdy.data(streams["stdout"], b"o" * (CHUNK - 1))
        for _ in range(self.total // (CHUNK - 1)):
            writer.write(frame)
            await writer.drain()
        writer.write(
            spdy.data(streams["stdout"], fin=True)
            + spdy.data(streams["error"], SUCCESS)
            + spdy.data(streams["error"], fin=True)
        )
        await writer.drain()
        await reader.read(65536)


async def _session(port: int, tenant: str, token: str) -> tuple[int, float]:
    """One WebSocket exec through vgate: (stdout bytes received, seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /clusters/" + tenant.encode() + b"/api/v1/namespaces/default/pods/p/exec"
        b"?command=flood&stdout=true HTTP/1.1\r\nHost: bench\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
    )
    started = time.monotonic()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"exec upgrade refused: {head[:200]!r}")
    frames, received, done = websocket.Reader(masked=False, max_message=1 << 20), 0, False
    while not done:
        data = await reader.read(1 << 18)
        if not data:
            break
        for opcode, payload in frames.feed(data):
            if opcode == websocket.OP_BINARY and payload[:1] == b"\x01":
                received += len(payload) - 1
            elif opcode == websocket.OP_CLOSE:
                done = True
    writer.write(websocket.encode(websocket.OP_CLOSE, websocket.close_payload(1000), masked=True))
    writer.close()
    return received, time.monotonic() - started


def _recorded_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.cast")) if directory.exists() else 0


async def _measure(args: argparse.Namespace, work: Path) -> list[dict]:
    upstream = ExecUpstream(args.mib)
    await upstream.start()
    # the issuer's documents come from the upstream's first port (vgate reads them at start)
    issuer = LocalIssuer(f"http://127.0.0.1:{upstream.ports['both']}/issuer")
    upstream.documents = {f"/issuer/{k}": v for k, v in issuer.documents().items()}
    casts = work / "casts"
    tenants = {"plain": "both", "rec": "both", "bridge": "spdy_only", "bridgerec": "spdy_only"}
    gate = Vgate(
        work,
        issuer.issuer,
        upstream.ports["both"],
        procs.proxy_cpu(),
        extra={
            "tenants": [
                {
                    "name": t,
                    "upstream": f"http://127.0.0.1:{upstream.ports[p]}",
                    "token_file": "tenant.token",
                }
                for t, p in tenants.items()
            ],
            "sessions": {
                "recording": {
                    "directory": str(casts),
                    "tenants": {
                        "rec": {"mode": "best-effort"},
                        "bridgerec": {"mode": "best-effort"},
                    },
                    "max_session_bytes": 4 << 30,
                    "buffer_bytes": 16 << 20,
                    "min_free_bytes": 0,
                }
            },
        },
    )
    (work / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": [f"oidc:{GROUP}"]}}})
    )
    await asyncio.to_thread(gate.start)  # it polls /readyz while this loop serves the keys
    token = issuer.token(1)
    rows = []
    try:
        for label, tenant in ROWS:
            await _session(gate.port, tenant, token)  # warm-up (and discovery, bridged)
            await asyncio.sleep(0.5)  # its cast is finished before anything is measured
            cpu, mib, seconds, recorded = [], 0.0, 0.0, 0
            for _ in range(args.sessions):
                before_cast = _recorded_bytes(casts)
                user0, sys0 = procs.cpu_times(gate.pids)
                received, took = await _session(gate.port, tenant, token)
                await asyncio.sleep(0.3)  # the recording thread finishes the cast
                user1, sys1 = procs.cpu_times(gate.pids)
                cpu.append(((user1 - user0) + (sys1 - sys0)) * 1e3 / (received / (1 << 20)))
                mib += received / (1 << 20)
                seconds += took
                recorded += _recorded_bytes(casts) - before_cast
            rows.append(
                {
                    "row": label,
                    "mib": mib,
                    "mib_per_s": mib / seconds,
                    "cpu_ms_per_mib": statistics.median(cpu),
                    "cast_mib": recorded / (1 << 20),
                }
            )
            print(f"{label}: {rows[-1]}", flush=True)
    finally:
        await asyncio.to_thread(gate.stop)
        upstream.close()
    return rows


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    out = [
        "| path | relayed MiB | MiB/s | vgate CPU ms per MiB | x tunnel | cast MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = rows[0]["cpu_ms_per_mib"]
    for r in rows:
        ratio = f"{r['cpu_ms_per_mib'] / base:.2f}" if base else "—"  # under one clock tick
        out.append(
            f"| {r['row']} | {r['mib']:.0f} | {r['mib_per_s']:.0f} | "
            f"{r['cpu_ms_per_mib']:.2f} | {ratio} | {r['cast_mib']:.0f} |"
        )
    out.append("")
    out.append(
        f"{args.sessions} sessions of {args.mib} MiB per row (median of the sessions); "
        f"load average at the end {procs.load_average()}."
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench.exec_relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mib", type=int, default=64, help="stdout MiB per session (64)")
    p.add_argument("--sessions", type=int, default=3, help="sessions per row (3)")
    args = p.parse_args(argv)
    load = procs.load_cpu()
    if load:
        os.sched_setaffinity(0, load)  # the upstream and the client: off vgate's core
    work = Path(tempfile.mkdtemp(prefix="vgate-exec-bench-"))
    try:
        rows = asyncio.run(_measure(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
