"""exec sessions through the gateway, with real kubectl (every version the machine has):
recorded as asciinema casts and played back, and bridged between WebSocket and SPDY/3.1.

The tenants are kubelet stand-ins (`tests/fakekube`; no kubelet runs here): `both` speaks
WebSocket and SPDY like a current API server, `spdyonly` refuses WebSocket streams like a
kubelet before 1.30 (a bare 403), `wsonly` sits behind an ingress stand-in that refuses
SPDY upgrades, and `rec` is `both` with recording required. A second ingress stand-in in
front of the gateway makes kubectl use WebSocket or fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli import main as cli_main
from tests.fakekube import FakeKube
from tests.support.gateway_thread import GatewayThread
from tests.support.ingress import SpdyRefusingIngress
from tests.support.kubectl_world import KUBECTL, USERS, pinned_kubectl, require_tools
from tests.support.oidc import OIDCProvider
from tests.support.pki import TestCA
from tests.support.tenants import start_standin

SPDY_ENV = {
    "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
    "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false",
}
WS_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "true"}
MAX_SESSION_BYTES = 1 << 20
BUFFER_BYTES = 256 << 10


@dataclass
class SessionWorld:
    dir: Path
    ca: TestCA
    idp: OIDCProvider
    gateway: GatewayThread
    standins: dict[str, FakeKube]
    tenant_ingress: SpdyRefusingIngress  # in front of tenant `wsonly`
    front_ingress: SpdyRefusingIngress  # in front of the gateway
    casts: Path
    audit: Path
    tenants: list[dict]
    tokens: dict[str, str] = field(default_factory=dict)

    def kubeconfig(
        self, tenant: str, *, front: bool = False, gateway: GatewayThread | None = None
    ) -> Path:
        base = self.front_ingress.url if front else (gateway or self.gateway).url
        name = f"kubeconfig-{tenant}-{'front' if front else (gateway or self.gateway).port}"
        path = self.dir / name
        if not path.exists():
            if "alice" not in self.tokens:
                self.tokens["alice"] = self.idp.login("alice").id_token
            path.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [
                            {
                                "name": "c",
                                "cluster": {
                                    "server": f"{base}/clusters/{tenant}",
                                    "certificate-authority": str(self.ca.cert_file),
                                },
                            }
                        ],
                        "users": [{"name": "alice", "user": {"token": self.tokens["alice"]}}],
                        "contexts": [
                            {
                                "name": "c",
                                "context": {
                                    "cluster": "c",
                                    "user": "alice",
                                    "namespace": "default",
                                },
                            }
                        ],
                        "current-context": "c",
                    }
                )
            )
        return path

    def argv(
        self,
        tenant: str,
        *args: str,
        kubectl: str = KUBECTL,
        front: bool = False,
        gateway: GatewayThread | None = None,
    ) -> list[str]:
        config = self.kubeconfig(tenant, front=front, gateway=gateway)
        return [kubectl, "--kubeconfig", str(config), *args]

    def kubectl(
        self,
        tenant: str,
        *args: str,
        env: dict | None = None,
        input: bytes | None = None,
        kubectl: str = KUBECTL,
        front: bool = False,
        gateway: GatewayThread | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(tenant, *args, kubectl=kubectl, front=front, gateway=gateway),
            input=input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def audit_lines(self) -> list[dict]:
        time.sleep(0.3)  # the audit log is flushed every 0.2 s
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line]


def _policy(base: Path) -> Path:
    folder = base / "policies"
    folder.mkdir()
    (folder / "all.yaml").write_text(
        yaml.safe_dump(
            {"tenant": "*", "roles": {"cluster-admin": {"groups": ["oidc:tenant1-admins"]}}}
        )
    )
    return folder


def _gateway_config(
    base: Path, idp: OIDCProvider, ca: TestCA, tenants: list[dict], recording: dict, name: str
) -> dict:
    leaf = ca.issue(f"gateway-{name}", ["127.0.0.1", "localhost"])
    return {
        "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
        "routing": {"path_prefix": "/clusters"},
        "oidc": {"issuers": [idp.issuer_entry()]},
        "policies": str(base / "policies"),
        "audit": {"file": str(base / f"audit-{name}.log")},
        "tenants": tenants,
        "sessions": {"recording": recording},
    }


@pytest.fixture(scope="module")
def sw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionWorld]:
    require_tools()
    base = tmp_path_factory.mktemp("sessions")
    ca = TestCA(base / "pki")
    standins = {
        "both": start_standin(ca, base, "both"),
        "spdyonly": start_standin(ca, base, "spdyonly", stream_transports=frozenset({"spdy"})),
        "wsonly": start_standin(ca, base, "wsonly"),
        "rec": start_standin(ca, base, "rec"),
    }
    started: list = list(standins.values())
    try:
        tenant_ingress = SpdyRefusingIngress(
            ca.issue("ingress-t", ["127.0.0.1"]), standins["wsonly"].url, ca.cert_file
        ).start()
        started.append(tenant_ingress)
        idp = OIDCProvider(base / "idp", users=USERS).start()
        started.append(idp)
        _policy(base)
        tenants = [
            {
                "name": name,
                "ca_file": str(ca.cert_file),
                "token_file": str(base / f"{name}.token"),
                "upstream": tenant_ingress.url if name == "wsonly" else kube.url,
            }
            for name, kube in standins.items()
        ]
        # `bulk`: the recorded stand-in again, best-effort (a loaded machine may make the
        # recording fall behind a flood of output: then it drops and marks, never ends it)
        tenants.append({**tenants[-1], "name": "bulk"})
        casts = base / "casts"
        config = _gateway_config(
            base,
            idp,
            ca,
            tenants,
            {
                "directory": str(casts),
                "tenants": {"rec": {"mode": "required"}, "bulk": {"mode": "best-effort"}},
                "max_session_bytes": MAX_SESSION_BYTES,
                "buffer_bytes": BUFFER_BYTES,
                "min_free_bytes": 0,
            },
            "main",
        )
        gateway = GatewayThread(base / "gateway", config).start()
        started.append(gateway)
        front = SpdyRefusingIngress(
            ca.issue("ingress-f", ["127.0.0.1"]), gateway.url, ca.cert_file
        ).start()
        started.append(front)
        yield SessionWorld(
            base,
            ca,
            idp,
            gateway,
            standins,
            tenant_ingress,
            front,
            casts,
            base / "audit-main.log",
            tenants,
        )
    finally:
        for thing in reversed(started):
            thing.stop()


def ok(result: subprocess.CompletedProcess) -> bytes:
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-3000:])
    return result.stdout


def upgrades(kube: FakeKube, since: int = 0) -> list[tuple[str, str, int]]:
    """(Upgrade header, subresource, status answered) of the stream requests the stand-in
    got since `since`."""
    out = []
    for record in kube.records[since:]:
        headers = {n.decode().lower(): v.decode() for n, v in record.headers}
        if "upgrade" in headers:
            path = record.target.partition(b"?")[0].decode()
            out.append((headers["upgrade"].lower(), path.rsplit("/", 1)[-1], record.status))
    return out


# --- recording -------------------------------------------------------------------------------


def _in_pty(
    argv: list[str], keys: list[bytes], ready, size=(33, 101), limit: float = 30
) -> tuple[int, bytes]:
    """Run `argv` on a new terminal of `size` (rows, cols); type `keys` once `ready()` is
    true (kubectl has put the terminal in raw mode by then), 0.3 s apart; return the exit
    code and every byte the terminal showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen(
        argv,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        env=os.environ.copy(),
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + limit

    def read_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready_fds, _, _ = select.select([controller], [], [], 0.05)
            if ready_fds:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                output.extend(chunk)

    try:
        while not ready() and time.monotonic() < deadline:
            read_for(0.05)
        read_for(0.3)
        for key in keys:
            os.write(controller, key)
            read_for(0.2)
        while proc.poll() is None and time.monotonic() < deadline:
            read_for(0.1)
        read_for(0.2)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    return proc.returncode, bytes(output)


def _new_cast(sw: SessionWorld, before: set[Path]) -> Path:
    found = set(sw.casts.glob("*.cast")) - before if sw.casts.exists() else set()
    assert len(found) == 1, found
    return found.pop()


def _events(path: Path) -> tuple[dict, list[list]]:
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def _vgate(capfdbinary: pytest.CaptureFixture[bytes], *args: str) -> tuple[int, bytes]:
    """Run `vgate ARGS` (the command's own entry point, in this process): (exit, stdout)."""
    capfdbinary.readouterr()
    code = cli_main(list(args))
    sys.stdout.flush()
    return code, capfdbinary.readouterr().out


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_tty_session_is_recorded_and_plays_back_byte_exact(
    sw: SessionWorld, transport: str, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    before = set(sw.casts.glob("*.cast")) if sw.casts.exists() else set()
    env_backup = {k: os.environ.get(k) for k in SPDY_ENV}
    os.environ.update(SPDY_ENV if transport == "spdy" else WS_ENV)
    try:
        code, screen = _in_pty(
            sw.argv("rec", "exec", "-it", "web-0", "--", "sh"),
            [b"echo hello there\r", b"stty size\r", b"exit 7\r"],
            ready=lambda: sw.casts.exists() and bool(set(sw.casts.glob("*.cast")) - before),
        )
    finally:
        for key, value in env_backup.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert code == 7, screen
    assert b"hello there\r\n" in screen and b"33 101\r\n" in screen, screen
    path = _new_cast(sw, before)
    time.sleep(0.5)  # the recording thread writes the end
    header, events = _events(path)
    meta = header["vgate"]
    assert header["version"] == 2 and (header["width"], header["height"]) == (101, 33)
    assert meta["user"] == "oidc:alice@example.com" and meta["tenant"] == "rec"
    assert (meta["namespace"], meta["pod"], meta["kind"]) == ("default", "web-0", "exec")
    assert meta["command"] == ["sh"] and meta["tty"] and meta["stdin_recorded"]
    assert meta["client_transport"] == transport and meta["tenant_transport"] == transport
    assert header["command"] == "sh"
    typed = "".join(text for _, code_, text in events if code_ == "i")
    assert typed == "echo hello there\rstty size\rexit 7\r"
    assert ["r", "101x33"] in [e[1:] for e in events]
    assert events[-1][1:] == ["m", "exit 7"]
    output = b"".join(
        text.encode("utf-8", "surrogateescape") for _, code_, text in events if code_ == "o"
    )
    # the terminal showed exactly the recorded output, then kubectl's own last words
    assert screen.startswith(output) and output.startswith(b"echo hello there"), (screen, output)
    assert screen[len(output) :] == b"command terminated with exit code 7\r\n"
    code, played = _vgate(
        capfdbinary, "sessions", "play", "--dir", str(sw.casts), "--speed", "50", meta["session"]
    )
    assert code == 0 and played == output  # byte for byte what the client's terminal got
    audit = [line for line in sw.audit_lines() if line.get("session") == meta["session"]]
    assert len(audit) == 1 and audit[0]["status"] == 101 and audit[0]["tenant"] == "rec"
    code, listed = _vgate(capfdbinary, "sessions", "list", "--dir", str(sw.casts), "--json")
    rows = [json.loads(line) for line in listed.splitlines()]
    assert {"session": meta["session"], "ended": "exit 7"}.items() <= next(
        r for r in rows if r["session"] == meta["session"]
    ).items()
    code, shown = _vgate(
        capfdbinary, "sessions", "show", "--dir", str(sw.casts), meta["session"][:8]
    )
    assert code == 0 and b"exit 7" in shown and b"web-0" in shown
    metrics = httpx.get(sw.gateway.metrics_url + "/metrics").text
    assert 'vgate_session_recordings_total{outcome="recorded",tenant="rec"}' in metrics


def test_stdin_without_a_tty_is_not_recorded(sw: SessionWorld) -> None:
    before = set(sw.casts.glob("*.cast")) if sw.casts.exists() else set()
    secret = b"password=hunter2\n"
    assert ok(sw.kubectl("rec", "exec", "-i", "web-0", "--", "cat", input=secret)) == secret
    path = _new_cast(sw, before)
    time.sleep(0.5)
    header, events = _events(path)
    assert not header["vgate"]["stdin_recorded"]
    assert not [e for e in events if e[1] == "i"]
    assert b"hunter2" in path.read_bytes()  # the output (cat echoes it) is recorded
    assert events[-1][1:] == ["m", "exit 0"]


def test_required_recording_that_cannot_be_written_refuses_with_503(sw: SessionWorld) -> None:
    blocker = sw.dir / "not-a-directory"
    blocker.write_text("a file where the recording directory's parent should be\n")
    config = _gateway_config(
        sw.dir,
        sw.idp,
        sw.ca,
        sw.tenants,
        {"mode": "required", "directory": str(blocker / "casts")},
        "unwritable",
    )
    gateway = GatewayThread(sw.dir / "gateway-unwritable", config).start()
    try:
        kube = sw.standins["both"]
        seen = len(kube.records)
        for env in (WS_ENV, SPDY_ENV):
            result = sw.kubectl(
                "both", "exec", "web-0", "--", "echo", "not run", env=env, gateway=gateway
            )
            assert result.returncode != 0 and b"not run" not in result.stdout
            stderr = result.stderr.decode()
            assert "must be recorded and the recording cannot be written" in stderr, stderr
            assert "Not a directory" in stderr and "ServiceUnavailable" in stderr, stderr
        assert upgrades(kube, seen) == []  # refused before anything was upgraded
        metrics = httpx.get(gateway.metrics_url + "/metrics").text
        refused = 'vgate_session_recordings_total{outcome="refused",tenant="both"} '
        # kubectl falls back to SPDY after the refused WebSocket: 3 refusals in all
        assert float(metrics.split(refused)[1].split()[0]) == 3, metrics
        # port-forward is not a terminal session: not recorded, not refused
        assert b"PING FIRST" in _port_forward(sw, "both", WS_ENV, gateway=gateway)
    finally:
        gateway.stop()


def test_a_long_session_cast_stays_bounded(sw: SessionWorld) -> None:
    before = set(sw.casts.glob("*.cast")) if sw.casts.exists() else set()
    started = time.monotonic()
    out = ok(sw.kubectl("bulk", "exec", "web-0", "--", "seq", "1500000", timeout=30))
    assert out.endswith(b"\n1499999\n1500000\n") and out.count(b"\n") == 1_500_000
    assert time.monotonic() - started < 30
    path = _new_cast(sw, before)
    time.sleep(0.5)
    assert len(out) > 9 * MAX_SESSION_BYTES
    assert path.stat().st_size <= MAX_SESSION_BYTES
    _, events = _events(path)
    markers = [e[2] for e in events if e[1] == "m"]
    assert markers[-1] == "exit 0" and any(m.startswith("recording cut") for m in markers)
    recorded = b"".join(e[2].encode() for e in events if e[1] == "o")
    gaps = [int(m.split()[2]) for m in markers if m.startswith("recording gap")]
    if not gaps:  # the disk kept up: the cast holds the output's beginning exactly
        assert out.startswith(recorded) and len(recorded) > MAX_SESSION_BYTES // 2
    peak = sw.gateway.call(lambda: sw.gateway.gateway.sessions.peak_buffered)
    assert 0 < peak <= BUFFER_BYTES  # what waited for the disk never passed the bound


# --- bridging ----------------------------------------------------------------------------------

ENVS = {"websocket": WS_ENV, "spdy": SPDY_ENV}
#: what reaches each tenant's stand-in: tenant → client transport → (upgrade seen, bridged)
EXPECTED = {
    "both": {"websocket": ("websocket", False), "spdy": ("spdy/3.1", False)},
    "spdyonly": {"websocket": ("spdy/3.1", True), "spdy": ("spdy/3.1", False)},
    "wsonly": {"websocket": ("websocket", False), "spdy": ("websocket", True)},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_forward(
    sw: SessionWorld,
    tenant: str,
    env: dict,
    kubectl: str = KUBECTL,
    front: bool = False,
    gateway: GatewayThread | None = None,
) -> bytes:
    local = _free_port()
    proc = subprocess.Popen(
        sw.argv(
            tenant,
            "port-forward",
            "--address",
            "127.0.0.1",
            "pod/web-0",
            f"{local}:8080",
            kubectl=kubectl,
            front=front,
            gateway=gateway,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert b"Forwarding from" in line, (line, proc.stderr.read() if proc.poll() else b"")
        replies = []
        for word in (b"first", b"second"):  # two connections: a stream pair each
            with socket.create_connection(("127.0.0.1", local), timeout=10) as s:
                s.sendall(b"ping " + word)
                reply = b""
                while b"PING " + word.upper() not in reply:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                replies.append(reply)
        return b"".join(replies)
    finally:
        proc.terminate()
        proc.wait(10)


def _check_route(sw: SessionWorld, tenant: str, client: str, kind: str, seen: int) -> None:
    kube = sw.standins[tenant]
    upgrade, _ = EXPECTED[tenant][client]
    got = upgrades(kube, seen)
    switched = [(u, sub) for u, sub, status in got if status == 101]
    assert switched and all(u == upgrade and sub == kind for u, sub in switched), got
    assert len(got) - len(switched) <= 1, got  # a refusal at most once: then it is known


@pytest.mark.parametrize("tenant", list(EXPECTED))
@pytest.mark.parametrize("client", ["websocket", "spdy"])
def test_bridging_matrix(sw: SessionWorld, tenant: str, client: str, tmp_path: Path) -> None:
    """exec, attach, cp and port-forward from a kubectl 1.32 speaking `client` to a tenant
    that takes WebSocket and SPDY, only SPDY, or only WebSocket."""
    env = ENVS[client]
    kube = sw.standins[tenant]
    # exec: stdout, stderr, stdin, the exit status
    seen = len(kube.records)
    assert (
        ok(sw.kubectl(tenant, "exec", "web-0", "--", "echo", "hello", tenant, env=env))
        == f"hello {tenant}\n".encode()
    )
    failed = sw.kubectl(tenant, "exec", "web-0", "--", "sh", "-c", "nosuch; exit 3", env=env)
    assert failed.returncode == 3 and b"nosuch: not found" in failed.stderr, failed.stderr
    data = b"".join(b"line %d\n" % i for i in range(3000))
    assert ok(sw.kubectl(tenant, "exec", "-i", "web-0", "--", "cat", input=data, env=env)) == data
    _check_route(sw, tenant, client, "exec", seen)
    # attach: the main process echoes stdin lines until stdin ends
    seen = len(kube.records)
    out = ok(sw.kubectl(tenant, "attach", "-i", "web-0", input=b"first\nsecond\n", env=env))
    assert b"first\nsecond\n" in out
    _check_route(sw, tenant, client, "attach", seen)
    # cp: tar over exec, both ways
    seen = len(kube.records)
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(200_000))
    ok(sw.kubectl(tenant, "cp", str(src), f"web-0:/tmp/p-{client}", env=env))
    back = tmp_path / "back.bin"
    ok(sw.kubectl(tenant, "cp", f"web-0:/tmp/p-{client}", str(back), env=env))
    assert back.read_bytes() == src.read_bytes()
    _check_route(sw, tenant, client, "exec", seen)
    # port-forward: data both ways on two connections
    seen = len(kube.records)
    reply = _port_forward(sw, tenant, env)
    assert reply.count(b"PORT 8080") == 2 and b"PING FIRST" in reply and b"PING SECOND" in reply
    _check_route(sw, tenant, client, "portforward", seen)
    # the audit line says when the gateway bridged
    _, bridged = EXPECTED[tenant][client]
    lines = [a for a in sw.audit_lines() if a["tenant"] == tenant and a["status"] == 101]
    expected = f"{client}->{'spdy' if client == 'websocket' else 'websocket'}"
    assert lines and all((a.get("bridged") == expected) == bridged for a in lines[-6:]), lines[-6:]


def test_tenant_protocol_is_learnt_once(sw: SessionWorld) -> None:
    """The first WebSocket exec to `spdyonly` is refused there, retried as SPDY and
    remembered: the next goes to SPDY at once."""
    kube = sw.standins["spdyonly"]
    sw.gateway.call(lambda: sw.gateway.gateway.forwarder.protocols.forget("spdyonly"))
    seen = len(kube.records)
    ok(sw.kubectl("spdyonly", "exec", "web-0", "--", "true", env=WS_ENV))
    assert [(u, s) for u, _, s in upgrades(kube, seen)] == [("websocket", 403), ("spdy/3.1", 101)]
    seen = len(kube.records)
    ok(sw.kubectl("spdyonly", "exec", "web-0", "--", "true", env=WS_ENV))
    assert [(u, s) for u, _, s in upgrades(kube, seen)] == [("spdy/3.1", 101)]
    time.sleep(0.2)  # the session's end is counted when its connection closes
    metrics = httpx.get(sw.gateway.metrics_url + "/metrics").text
    bridged = 'vgate_stream_sessions_total{path="websocket->spdy",tenant="spdyonly"} '
    assert bridged in metrics and float(metrics.split(bridged)[1].split()[0]) >= 2


@pytest.mark.parametrize(
    ("minor", "tenant", "client"),
    [
        ("27", "wsonly", "spdy"),  # SPDY only: the gateway speaks WebSocket to the tenant
        ("28", "wsonly", "spdy"),
        ("29", "spdyonly", "websocket"),  # WebSocket exec behind a feature gate (the env)
        ("30", "spdyonly", "websocket"),  # WebSocket exec by default, port-forward by the env
        ("31", "spdyonly", "websocket"),  # both by default
        ("33", "spdyonly", "websocket"),
        ("33", "wsonly", "spdy"),
    ],
)
def test_kubectl_versions(sw: SessionWorld, minor: str, tenant: str, client: str) -> None:
    """Each pinned kubectl the machine has, against a tenant that refuses its upgrade."""
    kubectl = pinned_kubectl(minor)
    env = ENVS[client]
    text = f"from kubectl 1.{minor}\n".encode()
    audit_seen = len(sw.audit_lines())
    out = ok(
        sw.kubectl(tenant, "exec", "-i", "web-0", "--", "cat", input=text, env=env, kubectl=kubectl)
    )
    assert out == text
    reply = _port_forward(sw, tenant, env, kubectl=kubectl)
    assert b"PING FIRST" in reply and b"PING SECOND" in reply
    # kubectl before 1.30 has no WebSocket port-forward at all
    forward_client = client if int(minor) >= 30 else "spdy"
    bridged = {
        line["path"].split("?")[0].rsplit("/", 1)[-1]: line.get("bridged")
        for line in sw.audit_lines()[audit_seen:]
        if line["status"] == 101
    }
    other = {"websocket": "spdy", "spdy": "websocket"}
    assert bridged["exec"] == f"{client}->{other[client]}", bridged
    expected = (
        f"{forward_client}->{other[forward_client]}"
        if EXPECTED[tenant][forward_client][1]
        else None
    )
    assert bridged["portforward"] == expected, bridged


def test_through_an_ingress_that_refuses_spdy(sw: SessionWorld) -> None:
    """kubectl → an ingress that drops SPDY → vgate → a tenant that speaks only SPDY."""
    seen = len(sw.front_ingress.refused)
    out = ok(
        sw.kubectl(
            "spdyonly",
            "exec",
            "-i",
            "web-0",
            "--",
            "cat",
            input=b"via ingress\n",
            env=WS_ENV,
            front=True,
        )
    )
    assert out == b"via ingress\n"
    reply = _port_forward(sw, "spdyonly", WS_ENV, front=True)
    assert b"PING FIRST" in reply
    assert len(sw.front_ingress.refused) == seen  # kubectl never needed SPDY
    # a SPDY-only client cannot pass such an ingress (nothing vgate can do about that)
    failed = sw.kubectl("spdyonly", "exec", "web-0", "--", "true", env=SPDY_ENV, front=True)
    assert failed.returncode != 0 and len(sw.front_ingress.refused) > seen
