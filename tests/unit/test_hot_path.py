"""The hot-path shortcuts keep their contracts: the lazy keep-alive timer still closes idle
connections (and only idle ones), audit lines stay valid JSON with the right identity,
and one response read upstream reaches the client in one piece."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.flow import Flow, Outcome
from gateway.identity import Grant, Identity
from gateway.record.audit import AuditLog
from tests.support.gateway_thread import GatewayThread

KEEPALIVE = 0.4


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """A tiny upstream answering every request with a 2-header JSON response."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    body = b'{"kind":"List","items":[]}'

    def serve(conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
                    )

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield srv.getsockname()[1]
    srv.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, issuer, upstream) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("hot")
    (d / "policies").mkdir()
    (d / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (d / "token").write_text("upstream-secret\n")
    config = {
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "policies": str(d / "policies"),
        "audit": {"file": str(d / "audit.log")},
        "limits": {"keepalive_timeout_seconds": KEEPALIVE},
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream}",
                "token_file": str(d / "token"),
            }
        ],
    }
    with GatewayThread(d, config) as gw:
        yield gw


def _request(sock: socket.socket, token: str) -> bytes:
    sock.sendall(
        b"GET /clusters/live/api/v1/pods HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_idle_connection_closes_after_keepalive_timeout(gateway, issuer) -> None:
    token = issuer.sign(issuer.claims(groups=["developers"]))
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        assert _request(s, token).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert _closed_within(s, KEEPALIVE * 6), "idle connection was never closed"
        assert time.monotonic() - started >= KEEPALIVE * 0.8


def test_busy_connection_outlives_the_keepalive_timeout(gateway, issuer) -> None:
    token = issuer.sign(issuer.claims(groups=["developers"]))
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        deadline = time.monotonic() + KEEPALIVE * 4
        while time.monotonic() < deadline:  # a request every half timeout: never idle long
            assert _request(s, token).startswith(b"HTTP/1.1 200")
            time.sleep(KEEPALIVE / 2)


def test_slow_request_head_is_not_cut_by_the_idle_timer(gateway, issuer) -> None:
    token = issuer.sign(issuer.claims(groups=["developers"]))
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(b"GET /clusters/live/api/v1/pods HTTP/1.1\r\n")
        time.sleep(KEEPALIVE * 1.5)  # a request in progress is not idle
        s.sendall(b"Host: x\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


class _Transport:
    """Records every write (each one is a send system call on a real socket)."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.writes: list[bytes] = []
        self.peer = peer

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_extra_info(self, _name: str) -> tuple[str, int]:
        return (self.peer, 1)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _Dispatcher:
    def __init__(self) -> None:
        self.exchanges: list = []

    def dispatch(self, exchange) -> None:
        self.exchanges.append(exchange)

    def done(self, exchange) -> None:
        pass


async def test_a_response_leaves_in_one_write_per_read() -> None:
    """Head and body of a local answer, and everything one upstream read yields, go to the
    client in a single write; nothing is held back past the read."""
    from gateway.config.model import Limits
    from gateway.http.connection import ClientConnection

    dispatcher, transport = _Dispatcher(), _Transport()
    conn = ClientConnection(dispatcher, Limits(), set())
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    first = dispatcher.exchanges[0]
    first.fail(404, "nope")
    assert len(transport.writes) == 1 and transport.writes[0].endswith(b"}")
    second = dispatcher.exchanges[1]  # the pipelined request started after the first ended
    conn.cork()  # what UpstreamConnection.data_received does around one read
    second.send_head(200, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    second.chunked_out = True
    second.send_body(b"part")
    assert len(transport.writes) == 1, "nothing leaves before the read is processed"
    conn.uncork()
    assert len(transport.writes) == 2 and transport.writes[1].endswith(b"4\r\npart\r\n")
    conn.close()


async def test_answers_of_one_round_of_io_leave_together_and_in_order() -> None:
    """`uncork_soon` (what an upstream read ends with) holds the bytes until the event loop
    has run this round's callbacks: answers to two reads leave in one write, in order. Past
    `MAX_CORKED_BYTES` they leave at once, so the transport's flow control sees them."""
    import asyncio

    from gateway.config.model import Limits
    from gateway.http.connection import MAX_CORKED_BYTES, ClientConnection

    dispatcher, transport = _Dispatcher(), _Transport()
    conn = ClientConnection(dispatcher, Limits(), set())
    conn.connection_made(transport)  # type: ignore[arg-type]
    for piece in (b"one,", b"two"):
        conn.cork()
        conn.write(piece)
        conn.uncork_soon()
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"one,two"]
    conn.cork()
    conn.write(b"x" * MAX_CORKED_BYTES)
    conn.uncork_soon()
    assert len(transport.writes) == 2, "a large read is written at once"
    conn.cork()
    conn.write(b"late")
    conn.close()  # closing flushes what is held
    assert transport.writes[-1] == b"late"
    await asyncio.sleep(0)
    assert len(transport.writes) == 3


def _identity(user: str, groups: tuple[str, ...]) -> Identity:
    return Identity(
        username=user,
        uid=f"uid-{user}",
        groups=groups,
        issuer="https://idp",
        expires_at=time.time() + 60,
    )


def _flow(
    *,
    peer: str = "127.0.0.1",
    method: bytes = b"GET",
    target: bytes = b"/clusters/t/x",
    status: int = 200,
    bytes_out: int = 12,
) -> Flow:
    """A flow on a real exchange: the request head parsed by a client connection from
    `peer`, and what its answer would have set (status, bytes sent)."""
    from gateway.config.model import Limits
    from gateway.http.connection import ClientConnection

    dispatcher = _Dispatcher()
    conn = ClientConnection(dispatcher, Limits(), set())
    conn.connection_made(_Transport(peer))  # type: ignore[arg-type]
    conn.data_received(method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    [exchange] = dispatcher.exchanges
    exchange.status, exchange.bytes_out = status, bytes_out
    return Flow(exchange)


async def test_audit_lines_are_json_with_each_requests_identity(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.log"))
    grants = []
    for user in ("alice", "bob", "alice"):
        ident = _identity(user, ("g",))
        grant = Grant("t", user, ident.uid, ("vgate:view",), ("view",), (), (f"why {user}",))
        flow = _flow()
        flow.tenant, flow.identity, flow.grant = "t", ident, grant
        flow.target = b'/api?q="\x01\\' + user.encode()
        flow.end(Outcome.ALLOW)
        log.write(flow)
        grants.append(grant)
    flow = _flow()
    flow.end(Outcome.UNAUTHENTICATED, 'bad "token"')
    log.write(flow)
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [x["user"] for x in lines] == ["alice", "bob", "alice", None]
    assert [x["decision"] for x in lines] == ["allow"] * 3 + ["unauthenticated"]
    assert lines[1]["granted_by"] == ["why bob"] and lines[1]["roles"] == ["view"]
    assert lines[0]["path"] == '/api?q="\x01\\alice'
    assert lines[3] == {
        **lines[3],
        "tenant": None,
        "groups": [],
        "reason": 'bad "token"',
        "path": "/clusters/t/x",
        "status": 200,
        "bytes": 12,
    }


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_refusals_keep_a_bodyless_connection_open(gateway, issuer) -> None:
    """A denied user hammering the gateway reuses its connection: no TCP handshake per 403."""
    nobody = issuer.sign(issuer.claims(groups=["no-role"]))
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.settimeout(5)
        for _ in range(3):
            s.sendall(
                b"GET /clusters/live/api/v1/pods HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + nobody.encode() + b"\r\n\r\n"
            )
            head = _answer(s)
            assert head.startswith(b"HTTP/1.1 403") and b"Connection: close" not in head
        s.sendall(b"GET /clusters/live/api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _answer(s)
        assert head.startswith(b"HTTP/1.1 401") and b"Connection: close" not in head


def test_refusal_before_the_body_arrived_closes(gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.settimeout(5)
        s.sendall(
            b"POST /clusters/live/api/v1/pods HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
        )
        head = _answer(s)
        assert head.startswith(b"HTTP/1.1 401") and b"Connection: close" in head
        assert _closed_within(s, 5)


def test_audit_lines_buffered_then_written_by_the_timer_and_at_size(tmp_path: Path) -> None:
    import asyncio

    from gateway.record import audit as audit_module

    path = tmp_path / "audit.log"
    log = AuditLog(str(path))

    def new_flow() -> Flow:
        flow = _flow(peer="10.0.0.1", method=b"PATCH", target=b"/x", bytes_out=1)
        flow.end(Outcome.ALLOW)
        return flow

    async def run() -> None:
        log.write(new_flow())
        assert path.read_text() == ""  # buffered
        await asyncio.sleep(audit_module.FLUSH_INTERVAL + 0.2)
        assert len(path.read_text().splitlines()) == 1  # the timer wrote it
        for _ in range(audit_module.MAX_BUFFERED_LINES):
            log.write(new_flow())
        # a full buffer went out at once, without waiting for the timer
        assert len(path.read_text().splitlines()) >= audit_module.MAX_BUFFERED_LINES

    asyncio.run(run())
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 1 + audit_module.MAX_BUFFERED_LINES
    assert {x["method"] for x in lines} == {"PATCH"}
    assert {x["source"] for x in lines} == {"10.0.0.1"}
    assert all(isinstance(x["duration_ms"], float) for x in lines)


@pytest.mark.parametrize(
    ("elapsed", "shown"),
    [
        (0.0, "0.000"),
        (0.0000004, "0.000"),
        (0.0000006, "0.001"),
        (0.0012345, "1.235"),
        (0.0405, "40.500"),
        (1.0, "1000.000"),
        (86_400.25, "86400250.000"),
    ],
)
async def test_audit_duration_is_milliseconds_to_three_places(
    tmp_path: Path, elapsed: float, shown: str
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(str(path))
    flow = _flow()
    flow.end(Outcome.ALLOW)
    log.write(flow, elapsed)
    log.close()
    line = path.read_text()
    assert f'"duration_ms":{shown},' in line or f'"duration_ms":{shown}}}' in line, line
    assert json.loads(line)["duration_ms"] == float(shown)


@pytest.mark.parametrize(
    ("target", "streaming"),
    [
        (b"/api/v1/pods", False),
        (b"/api/v1/pods?limit=500", False),
        (b"/api/v1/pods?watch=true", True),
        (b"/api/v1/pods?limit=1&watch=1", True),
        (b"/api/v1/pods?watch=false", False),
        (b"/api/v1/pods?watch=0&resourceVersion=1", False),
        (b"/api/v1/namespaces/x/pods/p/log?follow=true&container=c", True),
        (b"/api/v1/namespaces/x/pods/p/log?follow=1", True),
        (b"/api/v1/namespaces/x/pods/watch=true/log", False),  # not in the query
        (b"/a?" + b"?" * 8000 + b"limit=1", False),  # many `?`: still one linear scan
    ],
)
def test_streaming_requests_are_told_by_their_query(target: bytes, streaming: bool) -> None:
    from gateway.forward.forwarder import is_streaming

    assert is_streaming(target) is streaming


#: what one finished client connection is made of, on the gateway's side
_CONNECTION_PARTS = {
    "ClientConnection",
    "Exchange",
    "RequestHeaders",
    "HttpRequestParser",
    "SSLProtocol",
    "_SSLProtocolTransport",
    "DirectSSLObject",
    "_SSLSocket",
    "MemoryBIO",
    "UVTransport",
    "TCPTransport",
}


def _cyclic_garbage_after(make_connections) -> dict[str, int]:
    """Which connection parts the cycle collector (not reference counting) had to free
    after `make_connections()` ran and its connections closed."""
    import collections
    import gc

    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.garbage.clear()
        make_connections()
        time.sleep(0.3)  # the gateway's loop runs connection_lost
        gc.collect()
        return dict(
            collections.Counter(
                type(o).__name__ for o in gc.garbage if type(o).__name__ in _CONNECTION_PARTS
            )
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_a_finished_connection_is_freed_without_the_cycle_collector(gateway, issuer) -> None:
    """kubectl opens a connection per command. A finished connection must be freed by
    reference counting: left to the cycle collector, closed connections pile up until a
    collection stops the event loop (6.6 ms for one batch of ~260 closed TLS connections,
    measured in the bench)."""
    token = issuer.sign(issuer.claims(groups=["developers"]))

    def connections() -> None:
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", gateway.port)) as s:
                assert _request(s, token).startswith(b"HTTP/1.1 200")

    assert _cyclic_garbage_after(connections) == {}
