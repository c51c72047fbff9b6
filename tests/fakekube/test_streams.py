"""The exec/attach/port-forward stand-in (`tests/fakekube/streams`).

Real kubectl drives it over WebSocket (the default) and SPDY/3.1 (env set to `false`) through a
small TLS harness; a few unit checks pin the codecs and refusals without kubectl.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import shutil
import signal
import ssl
import struct
import termios
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakekube.streams import FilesystemRegistry, StreamRequest
from tests.fakekube.streams import spdy_frames as frames
from tests.fakekube.streams.bytesource import ConnectionClosed, StreamSource
from tests.fakekube.streams.harness import Harness, Served
from tests.fakekube.streams.negotiate import Refusal, Upgrade, negotiate
from tests.fakekube.streams.podfs import PodFilesystem
from tests.fakekube.streams.proc import Proc
from tests.fakekube.streams.procio import ProcessIO
from tests.fakekube.streams.spdy_dictionary import DICTIONARY
from tests.fakekube.streams.tarcmd import parse_args
from tests.support.pki import Leaf, TestCA

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not on PATH; these tests drive the real binary"
)
MODE_ENV = ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "KUBECTL_PORT_FORWARD_WEBSOCKETS")
EXPECTED = {
    "websocket": ("websocket", "v5.channel.k8s.io"),
    "spdy": ("SPDY/3.1", "v4.channel.k8s.io"),
}
RUN_LIMIT = 30.0


@dataclass
class Result:
    code: int
    out: bytes
    err: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, Leaf]:
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("server", ["127.0.0.1"])


@pytest.fixture
async def harness(pki: tuple[TestCA, Leaf]) -> AsyncIterator[Harness]:
    _, leaf = pki
    async with Harness(leaf.cert_file, leaf.key_file, FilesystemRegistry()) as h:
        yield h
        # Every session ended and closed its connection once kubectl is gone: nothing leaks.
        assert await h.wait_idle(10)
        assert h.errors == []
        me = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not me] == []


@pytest.fixture(params=["websocket", "spdy"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


class Kubectl:
    """Runs real kubectl against the harness, forcing SPDY when mode is 'spdy'."""

    def __init__(self, harness: Harness, ca: TestCA, home: Path, mode: str) -> None:
        self.home = home
        self.mode = mode
        config = home / "kubeconfig"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "t",
                    "clusters": [
                        {
                            "name": "t",
                            "cluster": {
                                "server": harness.url,
                                "certificate-authority": str(ca.cert_file),
                            },
                        }
                    ],
                    "users": [{"name": "t", "user": {"token": "any-token"}}],
                    "contexts": [
                        {
                            "name": "t",
                            "context": {"cluster": "t", "user": "t", "namespace": "default"},
                        }
                    ],
                }
            )
        )
        self.env = {k: v for k, v in os.environ.items() if k not in MODE_ENV}
        self.env.update(KUBECONFIG=str(config), HOME=str(home))
        if mode == "spdy":
            self.env.update(dict.fromkeys(MODE_ENV, "false"))

    async def start(self, *args: str, **kwargs: object) -> asyncio.subprocess.Process:
        assert KUBECTL is not None
        kwargs.setdefault("stdin", asyncio.subprocess.DEVNULL)
        kwargs.setdefault("stdout", asyncio.subprocess.PIPE)
        kwargs.setdefault("stderr", asyncio.subprocess.PIPE)
        return await asyncio.create_subprocess_exec(
            KUBECTL,
            *args,
            env=self.env,
            cwd=self.home,
            **kwargs,  # type: ignore[arg-type]
        )

    async def run(self, *args: str, stdin: bytes | None = None) -> Result:
        pipe = asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL
        proc = await self.start(*args, stdin=pipe)
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), RUN_LIMIT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kubectl {' '.join(args)} ran over {RUN_LIMIT}s") from None
        return Result(proc.returncode or 0, out, err.decode(errors="replace"))


@pytest.fixture
def kubectl(harness: Harness, pki: tuple[TestCA, Leaf], tmp_path: Path, mode: str) -> Kubectl:
    return Kubectl(harness, pki[0], tmp_path, mode)


async def assert_transport(harness: Harness, mode: str, kind: str = "exec") -> None:
    """Every stream request used `mode`'s transport and protocol and got 101."""
    assert await harness.wait_idle(10)  # sessions finish just after kubectl exits
    assert harness.served
    for served in harness.served:
        assert_served(served, mode, kind)


def assert_served(served: Served, mode: str, kind: str) -> None:
    upgrade, protocol = EXPECTED[mode]
    if kind == "portforward":
        protocol = "SPDY/3.1+portforward.k8s.io" if mode == "websocket" else "portforward.k8s.io"
    assert (served.kind, served.upgrade, served.protocol, served.status) == (
        kind,
        upgrade,
        protocol,
        101,
    )


# --- real kubectl, both transports ------------------------------------------------------------


@pytest.mark.integration
@needs_kubectl
async def test_exec_echo(kubectl: Kubectl, harness: Harness, mode: str) -> None:
    result = await kubectl.run("exec", "web-0", "--", "echo", "hi")
    assert (result.code, result.out) == (0, b"hi\n"), result.err
    await assert_transport(harness, mode)
    assert ("GET", "/api/v1/namespaces/default/pods/web-0") in harness.requests


@pytest.mark.integration
@needs_kubectl
async def test_exec_stdin_round_trip(kubectl: Kubectl, harness: Harness, mode: str) -> None:
    data = os.urandom(200_000) + b"\nlast line\n"
    result = await kubectl.run("exec", "-i", "web-0", "--", "cat", stdin=data)
    assert result.code == 0, result.err
    assert result.out == data
    await assert_transport(harness, mode)


@pytest.mark.integration
@needs_kubectl
async def test_exec_exit_code(kubectl: Kubectl, mode: str) -> None:
    result = await kubectl.run("exec", "web-0", "--", "sh", "-c", "exit 3")
    assert result.code == 3
    assert "command terminated with exit code 3" in result.err


@pytest.mark.integration
@needs_kubectl
async def test_exec_unknown_command(kubectl: Kubectl, mode: str) -> None:
    result = await kubectl.run("exec", "web-0", "--", "no-such-tool")
    assert result.code == 126
    assert 'exec: "no-such-tool": executable file not found in $PATH' in result.err


@pytest.mark.integration
@needs_kubectl
async def test_cp_round_trip(kubectl: Kubectl, harness: Harness, mode: str) -> None:
    original = os.urandom(300_000)
    (kubectl.home / "localfile").write_bytes(original)
    pushed = await kubectl.run("cp", "localfile", "web-0:/tmp/x")
    assert pushed.code == 0, pushed.err
    assert harness.files.get("default", "web-0").read("/tmp/x") == original
    pulled = await kubectl.run("cp", "web-0:/tmp/x", "back")
    assert pulled.code == 0, pulled.err
    assert (kubectl.home / "back").read_bytes() == original
    execs = [target for _, target in harness.requests if "/exec?" in target]
    assert any("command=tar&command=-xmf&command=-&command=-C&command=%2Ftmp&" in t for t in execs)
    assert any("command=tar&command=cf&command=-&command=%2Ftmp%2Fx&" in t for t in execs)
    await assert_transport(harness, mode)


@pytest.mark.integration
@needs_kubectl
async def test_attach_echoes_stdin_lines(kubectl: Kubectl, harness: Harness, mode: str) -> None:
    result = await kubectl.run("attach", "-i", "web-0", stdin=b"first line\nsecond line\n")
    assert result.code == 0, result.err
    assert result.out == b"first line\nsecond line\n"
    await assert_transport(harness, mode, "attach")


@pytest.mark.integration
@needs_kubectl
async def test_port_forward(kubectl: Kubectl, harness: Harness, mode: str) -> None:
    proc = await kubectl.start("port-forward", "--address=127.0.0.1", "pod/web-0", ":8080")
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), RUN_LIMIT)
        found = re.search(rb"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", line)
        assert found, line
        for _ in range(2):  # a second connection gets its own stream pair and greeting
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", int(found.group(1))), 5
            )
            writer.write(b"hello")
            expected = b"PORT 8080\nHELLO"
            assert await asyncio.wait_for(reader.readexactly(len(expected)), 10) == expected
            writer.write(b"again")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"AGAIN"
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await writer.wait_closed()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), RUN_LIMIT)
    assert proc.returncode == 0
    await assert_transport(harness, mode, "portforward")


@pytest.mark.integration
@needs_kubectl
async def test_tty_gets_resize_and_line_discipline(kubectl: Kubectl, mode: str) -> None:
    async def in_pty(*argv: str, keys: list[bytes]) -> bytes:
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        proc = await kubectl.start(
            *argv, stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True
        )
        os.close(terminal)
        output = bytearray()
        loop = asyncio.get_running_loop()
        os.set_blocking(controller, False)

        def drain() -> None:
            with contextlib.suppress(OSError):
                output.extend(os.read(controller, 65536))

        loop.add_reader(controller, drain)
        try:
            for key in keys:
                await asyncio.sleep(0.8)
                os.write(controller, key)
            await asyncio.wait_for(proc.wait(), RUN_LIMIT)
            await asyncio.sleep(0.1)
            drain()
        finally:
            loop.remove_reader(controller)
            os.close(controller)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, bytes(output)
        return bytes(output)

    assert b"33 101\r\n" in await in_pty("exec", "-it", "web-0", "--", "stty", "size", keys=[])
    typed = await in_pty("exec", "-it", "web-0", "--", "cat", keys=[b"typed\r", b"\x04"])
    assert b"typed\r\ntyped\r\n" in typed  # the tty's echo, then cat's output


@pytest.mark.integration
@needs_kubectl
async def test_session_ends_when_client_vanishes(
    kubectl: Kubectl, harness: Harness, mode: str
) -> None:
    proc = await kubectl.start("exec", "web-0", "--", "sleep", "600")
    try:
        await asyncio.wait_for(harness.stream_started.wait(), RUN_LIMIT)
        await asyncio.sleep(0.5)  # the session is running `sleep 600` now
        assert harness.open_connections >= 1
    finally:
        proc.kill()
        await proc.wait()
    await assert_transport(harness, mode)


# --- unit checks, no kubectl -------------------------------------------------------------------


def _request(
    kind: str,
    headers: list[tuple[str, str]],
    query: list[tuple[str, str]] | None = None,
) -> StreamRequest:
    query = [("command", "echo"), ("stdout", "true")] if query is None else query
    return StreamRequest(kind, "default", "web-0", query, headers)


def test_negotiation_follows_client_order_and_refuses_the_unknown() -> None:
    ws = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ]
    chosen = negotiate(
        _request(
            "exec", [*ws, ("sec-websocket-protocol", "base64.channel.k8s.io, v4.channel.k8s.io")]
        )
    )
    assert isinstance(chosen, Upgrade) and chosen.protocol == "v4.channel.k8s.io"
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in chosen.headers  # RFC 6455
    spdy = [("connection", "Upgrade"), ("upgrade", "SPDY/3.1")]
    offered = [("x-stream-protocol-version", v) for v in ("v5.channel.k8s.io", "v4.channel.k8s.io")]
    chosen = negotiate(_request("attach", [*spdy, *offered]))
    assert isinstance(chosen, Upgrade) and chosen.protocol == "v4.channel.k8s.io"
    refused = negotiate(_request("exec", [*ws, ("sec-websocket-protocol", "v1.channel.k8s.io")]))
    assert isinstance(refused, Refusal) and refused.code == 400
    assert isinstance(negotiate(_request("exec", [])), Refusal)
    no_command = negotiate(_request("exec", [*spdy, *offered], query=[]))
    assert isinstance(no_command, Refusal) and "at least one command" in no_command.message


async def test_refusal_is_a_status_response(harness: Harness, pki: tuple[TestCA, Leaf]) -> None:
    context = ssl.create_default_context(cafile=str(pki[0].cert_file))
    port = int(harness.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(
        b"POST /api/v1/namespaces/default/pods/web-0/exec?command=ls HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 0\r\n\r\n"
    )
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    status = json.loads(body)
    assert (status["kind"], status["code"], status["message"]) == (
        "Status",
        400,
        "Upgrade request required",
    )
    assert await harness.wait_idle(10)
    assert harness.served[-1].status == 400


async def test_websocket_with_an_independent_client(
    harness: Harness, pki: tuple[TestCA, Leaf]
) -> None:
    """The `websockets` library (not Go) speaks to the same server: stdin, close signal, ping."""
    connect = pytest.importorskip("websockets.asyncio.client").connect

    context = ssl.create_default_context(cafile=str(pki[0].cert_file))
    url = harness.url.replace("https", "wss") + (
        "/api/v1/namespaces/default/pods/web-0/exec?command=cat&stdin=true&stdout=true"
    )
    async with connect(
        url,
        ssl=context,
        subprotocols=["v5.channel.k8s.io"],  # type: ignore[list-item]
        open_timeout=10,
    ) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        await asyncio.wait_for(await ws.ping(b"beat"), 5)
        await ws.send(b"\x00" + b"x" * 70_000)  # 64-bit length frame
        await ws.send(b"\xff\x00")  # v5 CLOSE signal for stdin
        received = b""
        while len(received) < 70_000:
            message = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(message, bytes) and message[:1] == b"\x01"
            received += message[1:]
        assert received == b"x" * 70_000
        verdict = await asyncio.wait_for(ws.recv(), 10)
        assert verdict == b'\x03{"metadata":{},"status":"Success"}'
        await asyncio.wait_for(ws.wait_closed(), 10)
        assert ws.close_code == 1000


def test_spdy_header_blocks_share_one_zlib_context() -> None:
    compressor, decompressor = frames.HeaderCompressor(), frames.HeaderDecompressor()
    blocks = [{"streamtype": ["error"]}, {"streamtype": ["stdout"], "port": ["80", "81"]}, {}]
    encoded = [compressor.compress(b) for b in blocks]
    header = encoded[0][:6]
    assert header[1] & 0x20, "FDICT set: the SPDY dictionary is announced"
    assert int.from_bytes(header[2:6], "big") == zlib.adler32(DICTIONARY)
    assert len(encoded[1]) < len(frames.encode_block(blocks[1]))  # dictionary + history help
    assert [decompressor.decompress(e) for e in encoded] == blocks
    assert len(DICTIONARY) == 1423


def test_spdy_frame_layout() -> None:
    assert frames.data(3, b"ab", fin=True) == b"\x00\x00\x00\x03\x01\x00\x00\x02ab"
    assert frames.ping(7) == b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x07"
    assert frames.rst_stream(5, frames.RST_CANCEL)[:4] == b"\x80\x03\x00\x03"
    syn = frames.parse_syn_stream(b"\x00\x00\x00\x05\x00\x00\x00\x00\xe0\x00BLOCK")
    assert (syn.stream_id, syn.priority, syn.block) == (5, 7, b"BLOCK")


def test_tar_argument_forms_kubectl_uses() -> None:
    extract = parse_args(["-xmf", "-", "-C", "/tmp"])
    assert (extract.mode, extract.archive, extract.directory, extract.touch) == (
        "x",
        "-",
        "/tmp",
        True,
    )
    create = parse_args(["cf", "-", "/tmp/x"])
    assert (create.mode, create.archive, create.members) == ("c", "-", ["/tmp/x"])


async def test_shell_reads_script_from_stdin() -> None:
    from tests.fakekube.streams import commands

    out = bytearray()

    async def collect(data: bytes) -> None:
        out.extend(data)

    io = ProcessIO(out=collect, err=collect, tty=False, has_stdin=True)
    io.stdin.feed_data(b"echo one && false || echo two; ls /nowhere\nexit 7\necho never\n")
    io.close_stdin()
    proc = Proc(["sh"], io, PodFilesystem("web-0"), {}, commands.run)
    assert await asyncio.wait_for(commands.run(proc), 5) == 7
    assert out == b"one\ntwo\nls: cannot access '/nowhere': No such file or directory\n"


async def test_leftover_bytes_come_first() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"defgh")
    reader.feed_eof()
    source = StreamSource(reader, b"abc")
    assert await source.readexactly(2) == b"ab"
    assert await source.readexactly(4) == b"cdef"
    assert await source.readexactly(2) == b"gh"
    with pytest.raises(ConnectionClosed):
        await source.readexactly(1)
