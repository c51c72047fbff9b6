"""An open watch holds only what streaming needs: once the tenant's response head has been
relayed, the request's header fields (the bearer token among them), the head sent upstream
and both deadline timers are gone, events still flow, and the connection's idle timer comes
back when the watch ends."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.flow import Flow
from gateway.http.connection import ClientConnection
from tests.support.gateway_thread import GatewayThread

KEEPALIVE = 0.4
EVENT = b'{"type":"MODIFIED","object":{"kind":"Pod"}}\n'


class WatchUpstream:
    """Answers a watch with a chunked 200 and one event; `more()` sends another, `end()`
    ends the stream (the connection stays open)."""

    def __init__(self) -> None:
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(8)
        self.port = self.srv.getsockname()[1]
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.srv.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(65536)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + self._chunk(EVENT)
        )
        self.conn = conn
        self.ready.set()

    @staticmethod
    def _chunk(data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data)

    def more(self) -> None:
        assert self.conn is not None
        self.conn.sendall(self._chunk(EVENT))

    def end(self) -> None:
        assert self.conn is not None
        self.conn.sendall(b"0\r\n\r\n")

    def close(self) -> None:
        self.srv.close()
        if self.conn is not None:
            self.conn.close()


@pytest.fixture
def upstream() -> Iterator[WatchUpstream]:
    up = WatchUpstream()
    yield up
    up.close()


@pytest.fixture
def gateway(tmp_path: Path, issuer, upstream: WatchUpstream) -> Iterator[GatewayThread]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (tmp_path / "token").write_text("upstream-secret\n")
    config = {
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "policies": str(tmp_path / "policies"),
        "audit": {"file": str(tmp_path / "audit.log")},
        "limits": {"keepalive_timeout_seconds": KEEPALIVE},
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(tmp_path / "token"),
            }
        ],
    }
    with GatewayThread(tmp_path, config) as gw:
        yield gw


def _read_until(sock: socket.socket, data: bytes, want: bytes, count: int = 1) -> bytes:
    sock.settimeout(5)
    while data.count(want) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def _state(gw: GatewayThread) -> dict:
    """What the watching connection holds (read on the gateway's loop)."""
    conns: list[ClientConnection] = [c for c in gw.running.connections if c.current is not None]
    assert len(conns) == 1
    conn = conns[0]
    exchange = conn.current
    assert exchange is not None
    flow = exchange.context
    assert isinstance(flow, Flow)
    hook = exchange.client_gone_hook
    upstream_conn = getattr(hook, "__self__", None)
    return {
        "fields": list(exchange.headers),
        "authorization": exchange.head.authorization,
        "upstream_head": flow.upstream_head,
        "client_timer": conn._timer,
        "upstream_timer": getattr(upstream_conn, "_timer", "no upstream connection"),
        "target": exchange.target,
    }


def test_an_open_watch_keeps_no_request_state_and_no_timers(gateway, issuer, upstream) -> None:
    token = issuer.sign(issuer.claims(groups=["developers"]))
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        s.sendall(
            b"GET /clusters/live/api/v1/pods?watch=true HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
        )
        data = _read_until(s, b"", b'"MODIFIED"')
        assert data.startswith(b"HTTP/1.1 200")
        time.sleep(KEEPALIVE)  # past the connection's first deadline look (half a timeout)
        state = gateway.call(_state, gateway)
        assert state["fields"] == []
        assert state["authorization"] is None  # the bearer token is not kept
        assert state["upstream_head"] == b""
        assert state["client_timer"] is None
        assert state["upstream_timer"] is None
        assert state["target"] == b"/clusters/live/api/v1/pods?watch=true"  # the audit's
        upstream.more()  # still streaming
        data = _read_until(s, data, b'"MODIFIED"', 2)
        upstream.end()
        data = _read_until(s, data, b"0\r\n\r\n")
        # the watch ended: the connection is idle again and closes after the keep-alive
        started = time.monotonic()
        s.settimeout(KEEPALIVE * 6)
        assert s.recv(1) == b"", "the idle connection was never closed"
        assert time.monotonic() - started >= KEEPALIVE * 0.8


async def test_a_released_request_still_says_whether_it_asked_for_impersonation() -> None:
    """A policy reload ends open streams by what their request asked for (`kubectl --as`
    streams only when access is gone): that survives the release, the fields do not."""
    from gateway.config.model import Limits
    from gateway.http.exchange import Exchange
    from gateway.http.headers import RequestHeaders

    class NoDispatch:  # the exchanges are made here, not by the connection's parser
        def dispatch(self, exchange: Exchange) -> None:
            raise AssertionError("nothing is parsed")

        def done(self, exchange: Exchange) -> None:
            pass

    conn = ClientConnection(NoDispatch(), Limits(), set())

    for fields, impersonating in (
        ([(b"Host", b"x"), (b"Authorization", b"Bearer t")], False),
        ([(b"Host", b"x"), (b"Authorization", b"Bearer t"), (b"Impersonate-User", b"a")], True),
    ):
        head = RequestHeaders.of(fields)
        exchange = Exchange(
            conn,
            b"GET",
            b"/api/v1/pods?watch=true",
            head,
            http11=True,
            keep_alive=True,
            upgrade=False,
        )
        assert exchange.head.impersonation is impersonating
        exchange.release_request_head()
        assert exchange.head.impersonation is impersonating
        assert exchange.headers == [] and exchange.head.authorization is None
        assert exchange.target == b"/api/v1/pods?watch=true"
