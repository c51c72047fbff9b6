"""What needs a kubelet — exec, attach, cp, port-forward, `logs -f` — by real kubectl through
the gateway, over WebSocket and SPDY/3.1, to the stand-in tenant (`tests/fakekube`): the
real kube-apiserver here has no kubelet behind it. The stand-in also shows the exact request
heads the gateway sends upstream."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from tests.support.kubectl_world import World, ok, standin
from tests.support.tenants import STANDIN

STREAM_ENVS = {
    "websocket": {},
    "spdy": {
        "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
        "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false",
    },
}


def headers_of(record) -> list[tuple[str, str]]:
    return [(n.decode().lower(), v.decode()) for n, v in record.headers]


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_exec_non_interactive_and_exit_code(world: World, transport: str, mode: str) -> None:
    env = STREAM_ENVS[transport]
    out = ok(
        world.kubectl(
            STANDIN, "alice", "exec", "web-0", "--", "echo", "hello", "there", env=env, mode=mode
        )
    )
    assert out.strip() == "hello there"
    failed = world.kubectl(
        STANDIN, "alice", "exec", "web-0", "--", "sh", "-c", "exit 3", env=env, mode=mode
    )
    assert failed.returncode == 3, failed.stderr


def test_exec_request_head_is_exactly_the_gateways(world: World) -> None:
    """The upgrade request as it left the gateway: its credential, the impersonation
    headers, the request id as Audit-ID, and nothing of the client's."""
    token = world.token("alice")
    ok(world.kubectl(STANDIN, "alice", "exec", "web-0", "--", "true"))
    record = [r for r in standin(world).records if b"/exec" in r.target][-1]
    h = headers_of(record)
    assert [v for n, v in h if n == "authorization"] == [f"Bearer gateway-credential-for-{STANDIN}"]
    assert [v for n, v in h if n == "impersonate-user"] == ["oidc:alice@example.com"]
    assert [v for n, v in h if n == "impersonate-group"] == ["vgate:cluster-admin"]
    assert len([v for n, v in h if n == "impersonate-uid"]) == 1
    assert not [n for n, _ in h if n.startswith("impersonate-extra-")]
    assert len([v for n, v in h if n == "audit-id"]) == 1  # the request id, the only one
    for rec in standin(world).records:
        for _, value in rec.headers:
            assert token.encode() not in value


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_exec_interactive_stdin(world: World, transport: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(2000))
    out = world.kubectl(
        STANDIN, "alice", "exec", "-i", "web-0", "--", "cat", input=data, env=STREAM_ENVS[transport]
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


def test_logs_follow_streams_until_the_client_leaves(world: World) -> None:
    proc = subprocess.Popen(
        world.kubectl_argv(STANDIN, "alice", ["logs", "-f", "web-0"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(line.startswith(b"line") for line in lines), lines
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_cp_both_ways(world: World, transport: str, tmp_path) -> None:
    env = STREAM_ENVS[transport]
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300_000))
    ok(
        world.kubectl(
            STANDIN, "alice", "cp", str(src), f"web-0:/tmp/payload-{transport}", env=env, timeout=60
        )
    )
    back = tmp_path / "back.bin"
    ok(
        world.kubectl(
            STANDIN,
            "alice",
            "cp",
            f"web-0:/tmp/payload-{transport}",
            str(back),
            env=env,
            timeout=60,
        )
    )
    assert back.read_bytes() == src.read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_port_forward_carries_data_both_ways(world: World, transport: str) -> None:
    local = _free_port()
    proc = subprocess.Popen(
        world.kubectl_argv(
            STANDIN,
            "alice",
            ["port-forward", "--address", "127.0.0.1", "pod/web-0", f"{local}:8080"],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **STREAM_ENVS[transport]},
    )
    try:
        assert proc.stdout is not None
        assert b"Forwarding from" in proc.stdout.readline()
        with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
            s.sendall(b"ping over the tunnel")
            reply = b""
            while b"PING OVER THE TUNNEL" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert b"PORT 8080" in reply and b"PING OVER THE TUNNEL" in reply, reply
    finally:
        proc.terminate()
        proc.wait(10)
