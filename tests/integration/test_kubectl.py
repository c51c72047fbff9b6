"""Plain kubectl through the gateway: every verb, by path prefix and by hostname."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.integration.conftest import World, host_mode_available, wait_for

pytestmark = [pytest.mark.integration]

MODES = ["path", "host"]
STREAM_ENVS = {
    "websocket": {},
    "spdy": {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
             "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"},
}


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    if request.param == "host":
        why = host_mode_available()
        if why:
            pytest.skip(why)
    return request.param


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-2000:])
    return result.stdout.decode()


def last_record(world: World, tenant: str, needle: bytes):
    records = [r for r in world.tenants[tenant].records if needle in r.target]
    assert records, f"no request containing {needle!r} reached {tenant}"
    return records[-1]


def headers_of(record) -> list[tuple[str, str]]:
    return [(n.decode().lower(), v.decode()) for n, v in record.headers]


def test_get_pods_impersonates_exactly(world: World, mode: str) -> None:
    out = ok(world.kubectl("tenant1", "alice", "get", "pods", "-o", "name", mode=mode))
    assert "pod/web-0" in out
    rec = last_record(world, "tenant1", b"/api/v1/namespaces/default/pods")
    h = headers_of(rec)
    auth = [v for n, v in h if n == "authorization"]
    assert auth == ["Bearer gateway-credential-for-tenant1"], "only the gateway's credential"
    assert ("impersonate-user", "oidc:alice@example.com") in h
    assert [v for n, v in h if n == "impersonate-group"] == ["vgate:cluster-admin"]
    uid = [v for n, v in h if n == "impersonate-uid"]
    assert uid == ["alice"], "uid is the token's sub"
    extras = {n: v for n, v in h if n.startswith("impersonate-extra-")}
    assert extras["impersonate-extra-vgate.io%2fissuer"] == world.idp.issuer
    assert extras["impersonate-extra-vgate.io%2ftenant"] == "tenant1"
    audit_id = [v for n, v in h if n == "audit-id"]
    assert audit_id and extras["impersonate-extra-vgate.io%2frequest-id"] == audit_id[0]
    assert rec.identity.user == "oidc:alice@example.com"
    assert "vgate:cluster-admin" in rec.identity.groups


def test_tenants_are_isolated(world: World) -> None:
    # alice is cluster-admin in tenant1 and has no role in tenant2
    denied = world.kubectl("tenant2", "alice", "get", "pods")
    assert denied.returncode != 0
    assert b'has no access to tenant "tenant2"' in denied.stderr
    assert ok(world.kubectl("tenant2", "carol", "get", "pods", "-o", "name"))


def test_no_role_is_403_and_audited(world: World) -> None:
    result = world.kubectl("tenant1", "mallory", "get", "pods")
    assert result.returncode != 0
    assert b"Forbidden" in result.stderr or b"forbidden" in result.stderr
    def audit() -> list[dict]:
        text = (world.dir / "audit.log").read_text()
        return [json.loads(x) for x in text.splitlines() if x]

    wait_for(lambda: any(e["user"] == "oidc:mallory@example.com" for e in audit()))
    lines = audit()
    denials = [e for e in lines if e["user"] == "oidc:mallory@example.com"]
    assert denials and denials[-1]["decision"] == "deny" and denials[-1]["status"] == 403
    assert "no role" in denials[-1]["reason"]


def test_auth_whoami_shows_impersonated_identity(world: World, mode: str) -> None:
    out = ok(world.kubectl("tenant1", "bob", "auth", "whoami", "-o", "json", mode=mode))
    info = json.loads(out)["status"]["userInfo"]
    assert info["username"] == "oidc:bob@example.com"
    assert info["uid"] == "bob"
    assert "vgate:view" in info["groups"] and "system:authenticated" in info["groups"]
    assert not any(g.startswith("oidc:") for g in info["groups"]), "IdP groups are not forwarded"


def test_auth_can_i_follows_the_role(world: World) -> None:
    assert ok(world.kubectl("tenant1", "alice", "auth", "can-i", "delete", "pods")).strip() == "yes"
    viewer = world.kubectl("tenant1", "bob", "auth", "can-i", "delete", "pods")
    assert viewer.stdout.decode().strip() == "no"
    assert ok(world.kubectl("tenant1", "bob", "auth", "can-i", "list", "pods")).strip() == "yes"


def test_as_flag_is_refused_clearly(world: World) -> None:
    result = world.kubectl("tenant1", "alice", "--as", "bob@example.com", "get", "pods")
    assert result.returncode != 0
    assert b"impersonation" in result.stderr
    assert not any(b"as=" in r.target for r in world.tenants["tenant1"].records)


def test_view_role_cannot_exec_and_refusal_is_relayed(world: World) -> None:
    result = world.kubectl("tenant1", "bob", "exec", "web-0", "--", "echo", "hi")
    assert result.returncode != 0
    assert b"forbidden" in result.stderr.lower()


def test_apply_server_side_and_dry_run(world: World, mode: str) -> None:
    name = f"cm-{mode}"
    manifest = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": name}, "data": {"k": "v"}}).encode()
    dry = world.kubectl("tenant1", "alice", "apply", "--dry-run=server", "-f", "-",
                        input=manifest, mode=mode)
    ok(dry)
    missing = world.kubectl("tenant1", "alice", "get", "configmap", name, mode=mode)
    assert missing.returncode != 0, "dry-run must not persist"
    ok(world.kubectl("tenant1", "alice", "apply", "--server-side", "-f", "-",
                     input=manifest, mode=mode))
    got = json.loads(ok(world.kubectl("tenant1", "alice", "get", "configmap", name,
                                      "-o", "json", mode=mode)))
    assert got["data"] == {"k": "v"}


def test_watch_streams_events_and_cancels_upstream(world: World, mode: str) -> None:
    fake = world.tenants["tenant1"]
    before = fake.active_watches
    proc = subprocess.Popen(
        world.kubectl_argv("tenant1", "alice", ["get", "configmaps", "-w", "-o", "name"], mode),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: fake.active_watches > before, timeout=10), "watch never opened"
        name = f"watched-{mode}-{int(time.time() * 1000)}"
        ok(world.kubectl("tenant1", "alice", "create", "configmap", name, mode=mode))
        os.set_blocking(proc.stdout.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 5
        while name.encode() not in seen and time.monotonic() < deadline:
            chunk = proc.stdout.read()
            seen += chunk or b""
            time.sleep(0.05)
        assert name.encode() in seen, seen
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    assert wait_for(lambda: fake.active_watches == before, timeout=5), "upstream watch leaked"


def test_logs_follow_streams_until_the_client_leaves(world: World) -> None:
    proc = subprocess.Popen(
        world.kubectl_argv("tenant1", "alice", ["logs", "-f", "web-0"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert all(line.startswith(b"line") for line in lines), lines
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_exec_non_interactive_and_exit_code(world: World, transport: str, mode: str) -> None:
    env = STREAM_ENVS[transport]
    out = ok(world.kubectl("tenant1", "alice", "exec", "web-0", "--", "echo", "hello", "there",
                           env=env, mode=mode))
    assert out.strip() == "hello there"
    failed = world.kubectl("tenant1", "alice", "exec", "web-0", "--", "sh", "-c", "exit 3",
                           env=env, mode=mode)
    assert failed.returncode == 3, failed.stderr


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_exec_interactive_stdin(world: World, transport: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(2000))
    out = world.kubectl("tenant1", "alice", "exec", "-i", "web-0", "--", "cat",
                        input=data, env=STREAM_ENVS[transport])
    assert out.returncode == 0, out.stderr
    assert out.stdout == data


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_cp_both_ways(world: World, transport: str, tmp_path) -> None:
    env = STREAM_ENVS[transport]
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300_000))
    ok(world.kubectl("tenant1", "alice", "cp", str(src), f"web-0:/tmp/payload-{transport}",
                     env=env, timeout=60))
    back = tmp_path / "back.bin"
    ok(world.kubectl("tenant1", "alice", "cp", f"web-0:/tmp/payload-{transport}", str(back),
                     env=env, timeout=60))
    assert back.read_bytes() == src.read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("transport", list(STREAM_ENVS))
def test_port_forward_carries_data_both_ways(world: World, transport: str) -> None:
    local = _free_port()
    proc = subprocess.Popen(
        world.kubectl_argv("tenant1", "alice",
                           ["port-forward", "--address", "127.0.0.1", "pod/web-0",
                            f"{local}:8080"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, **STREAM_ENVS[transport]},
    )
    try:
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


def test_client_credentials_never_reach_upstream(world: World) -> None:
    token = world.token("alice")
    for rec in world.tenants["tenant1"].records:
        for name, value in rec.headers:
            assert token.encode() not in value
            if name.lower() == b"authorization":
                assert value == b"Bearer gateway-credential-for-tenant1"
