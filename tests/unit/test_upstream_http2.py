"""Watches to a TLS tenant as streams of shared HTTP/2 connections, against a tenant that
misbehaves in every way HTTP/2 allows: what leaves the gateway on a stream, streams sharing
a connection, cancellation, a slow client holding only its own stream's window, response
heads over the limits, the head deadline, REFUSED_STREAM and GOAWAY retried, resets and
connection loss after the head breaking the client's stream, protocol violations and floods
closing the connection, a tenant without h2, a 401 blaming the gateway's credential, and
`upstream.http2_for_watches: false`.

The tenant is a fault-injection stand-in (tests/support/h2_scripted.py: the `h2` library
server side, with a real TLS listener offering ALPN h2 and http/1.1); the gateway is the
real one, in a thread. A kube-apiserver's own HTTP/2 is covered by
tests/integration/test_kubectl.py::test_watches_share_one_http2_connection_upstream."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from h2.errors import ErrorCodes

from gateway.forward.multiplex import STREAM_WINDOW
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config
from tests.support.h2_scripted import H2ScriptedUpstream, H2Stream, event
from tests.support.pki import TestCA
from tests.support.tiers import tool_missing

RESPONSE_TIMEOUT = 1.0
HEAD_BYTES = 8192  # `upstream.max_response_head_bytes`
HEAD_FIELDS = 32  # `upstream.max_response_headers`
TOKEN = b"upstream-secret"


def config_for(d, issuer: CraftingIssuer, ca: TestCA, tenants: dict, **upstream) -> dict:
    return viewer_config(
        d,
        issuer.issuer,
        {name: f"https://127.0.0.1:{up.port}" for name, up in tenants.items()},
        ca_file=ca.cert_file,
        token=TOKEN.decode(),
        upstream={
            "response_timeout_seconds": RESPONSE_TIMEOUT,
            "max_response_head_bytes": HEAD_BYTES,
            "max_response_headers": HEAD_FIELDS,
            **upstream,
        },
    )


class World:
    def __init__(self, gw: GatewayThread, up: H2ScriptedUpstream, h1: H2ScriptedUpstream):
        self.gw, self.up, self.h1 = gw, up, h1


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("h2pki")
    ca = TestCA(d)
    return ca, ca.issue("upstream", ["127.0.0.1"])


@pytest.fixture(scope="module")
def world(tmp_path_factory, issuer: CraftingIssuer, pki) -> Iterator[World]:
    ca, leaf = pki
    up = H2ScriptedUpstream(leaf.cert_file, leaf.key_file)
    h1 = H2ScriptedUpstream(leaf.cert_file, leaf.key_file, protocols=("http/1.1",))
    d = tmp_path_factory.mktemp("h2faults")
    with GatewayThread(d, config_for(d, issuer, ca, {"h2": up, "h1only": h1})) as gw:
        yield World(gw, up, h1)
    up.stop()
    h1.stop()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """Each test starts with fresh pools in the gateway and a stand-in with empty records
    and default answers."""
    for tenant in ("h2", "h1only"):
        world.gw.call(world.gw.gateway.forwarder.forget, tenant)
    # what the last test left to send at the end of a loop round (a stream's RST_STREAM,
    # a GOAWAY) reaches the stand-in before its records are cleared
    world.gw.call(lambda: None)
    time.sleep(0.05)
    world.up.reset()
    world.h1.reset()
    yield world
    assert not world.up.errors, world.up.errors


@pytest.fixture
def token(issuer: CraftingIssuer) -> str:
    return issuer.sign(issuer.claims())


@pytest.fixture
def client(w: World, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=w.gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=5
    ) as c:
        yield c


def watch(ns: str, tenant: str = "h2") -> str:
    return f"/clusters/{tenant}/api/v1/namespaces/{ns}/pods?watch=1"


def names(lines: Iterator[str], count: int) -> list[str]:
    return [json.loads(next(lines))["object"]["metadata"]["name"] for _ in range(count)]


def socket_buffers() -> int:
    """What the gateway's socket to a client that does not read may buffer at most: its send
    buffer's autotuning limit, the client's receive buffer, and the transport's high-water
    mark."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        wmem_max = int(f.read().split()[2])
    return wmem_max + 256 * 1024 + 1024 * 1024


def status_of(r: httpx.Response) -> dict:
    r.read()
    body = r.json()
    assert body["kind"] == "Status", body
    return body


# -- what leaves the gateway ----------------------------------------------------------------


def test_a_watch_streams_over_h2_with_the_gateways_credential_only(w: World, client, token):
    with client.stream(
        "GET",
        watch("team-a") + "&resourceVersion=7",
        headers={"Connection": "keep-alive", "Keep-Alive": "timeout=5", "X-Trace": "t-1"},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert names(r.iter_lines(), 3) == ["pod-0", "pod-1", "pod-2"]
    [req] = w.up.requests
    assert req.protocol == "h2" and w.up.connections[0].alpn == "h2"
    assert req.headers[:4] == [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"127.0.0.1:{w.up.port}".encode()),
        (b":path", b"/api/v1/namespaces/team-a/pods?watch=1&resourceVersion=7"),
    ]
    assert req.get(b"authorization") == b"Bearer " + TOKEN
    assert token.encode() not in b"".join(v for _, v in req.headers)
    assert req.get(b"impersonate-user") == b"alice@example.com"
    assert [v for n, v in req.headers if n == b"impersonate-group"] == [b"vgate:view"]
    assert req.get(b"x-trace") == b"t-1"
    assert not req.names() & {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
    }
    assert all(n == n.lower() for n in req.names())


def test_a_watch_with_the_clients_own_impersonation_never_leaves(w: World, client):
    r = client.get(
        watch("team-a"), headers={"Impersonate-User": "root", "Impersonate-Group": "admins"}
    )
    assert r.status_code == 403
    assert not w.up.requests and not w.up.connections


def test_watches_share_one_connection_and_a_plain_get_uses_http11(w: World, client):
    with (
        client.stream("GET", watch("a")) as a,
        client.stream("GET", watch("b")) as b,
        client.stream("GET", watch("c")) as c,
    ):
        for r in (a, b, c):
            assert r.status_code == 200
            assert names(r.iter_lines(), 1) == ["pod-0"]
        listed = client.get("/clusters/h2/api/v1/namespaces/a/pods")
        assert listed.status_code == 200 and listed.json()["kind"] == "List"
    h2 = w.up.h2_requests()
    assert len(h2) == 3 and {r.conn for r in h2} == {0}
    [plain] = w.up.http1_requests()
    assert plain.path == b"/api/v1/namespaces/a/pods"
    assert w.up.connections[plain.conn].alpn == "http/1.1" and plain.conn != 0
    assert len(w.up.connections) == 2


def test_every_upstream_connection_has_tcp_keepalive(w: World, client):
    """Both kinds of upstream connection (an HTTP/2 one carrying a watch, an HTTP/1.1 one
    left idle in the pool) probe a silent peer: the kernel shows their keepalive timers."""
    if shutil.which("ss") is None:
        tool_missing("ss (iproute2) is needed to read the sockets' timers")
    with client.stream("GET", watch("a")) as r:
        assert names(r.iter_lines(), 1) == ["pod-0"]
        assert client.get("/clusters/h2/api/v1/namespaces/a/pods").status_code == 200
    # both stay open (the HTTP/2 one without streams); a timer shows `on` while bytes are
    # unacknowledged, so look until both are quiet
    deadline, ours = time.monotonic() + 3, []
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ss", "-tno", "state", "established", f"dport = :{w.up.port}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ours = [line for line in out.splitlines() if f":{w.up.port}" in line]
        if len(ours) == 2 and all("timer:(keepalive," in line for line in ours):
            break
        time.sleep(0.05)
    assert len(ours) == 2 and all("timer:(keepalive," in line for line in ours), ours


# -- cancellation and flow control ----------------------------------------------------------


def test_a_closed_watch_is_cancelled_upstream_and_the_others_continue(w: World, client):
    with client.stream("GET", watch("stays")) as stays:
        stay_lines = stays.iter_lines()
        assert names(stay_lines, 1) == ["pod-0"]
        with client.stream("GET", watch("goes")) as goes:
            assert names(goes.iter_lines(), 1) == ["pod-0"]
        goes_id = next(r.stream_id for r in w.up.requests if b"/goes/" in r.path)
        w.up.wait(lambda: (0, goes_id, ErrorCodes.CANCEL) in w.up.resets, what="RST_STREAM")
        assert names(stay_lines, 3) == ["pod-1", "pod-2", "pod-3"]
    assert len(w.up.connections) == 1


def test_a_slow_client_holds_its_own_stream_only(w: World, client, token):
    pushers: dict[str, H2Stream] = {}

    async def handler(stream: H2Stream) -> None:
        if b"/slow/" in stream.path:
            pushers["slow"] = stream
            stream.respond()
            chunk = b'{"type":"ADDED","object":{"pad":"' + b"x" * 16000 + b'"}}\n'
            while True:
                await stream.send(chunk)
        else:
            await stream.watch(interval=0.02)

    w.up.handler = handler
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    slow.connect(("127.0.0.1", w.gw.port))
    try:
        request = f"GET {watch('slow')} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}"
        slow.sendall(request.encode() + b"\r\n\r\n")
        w.up.wait(lambda: "slow" in pushers and pushers["slow"].window == 0, what="window 0")
        with client.stream("GET", watch("fast")) as fast:
            lines = fast.iter_lines()
            start = time.monotonic()
            assert names(lines, 10) == [f"pod-{i}" for i in range(10)]
            assert time.monotonic() - start < 1.0  # 20 ms apart: no head-of-line blocking
        stream = pushers["slow"]
        sent = w.up.call(lambda: stream.sent)
        time.sleep(0.3)
        assert w.up.call(lambda: (stream.window, stream.sent)) == (0, sent)  # held
        # what the gateway took: the stream window plus what the sockets buffer
        assert STREAM_WINDOW <= sent < STREAM_WINDOW + socket_buffers()
        assert len(w.up.connections) == 1
    finally:
        slow.close()


# -- response heads -------------------------------------------------------------------------


async def hang(stream: H2Stream) -> None:
    await stream.until_gone()


def responding(headers: list[tuple[bytes, bytes]]):
    """Answers a watch in namespace `bad` with `headers`, any other as usual."""

    async def handler(stream: H2Stream) -> None:
        if b"/bad/" not in stream.path:
            await stream.watch()
            return
        stream.respond(200, headers)
        await stream.until_gone()

    return handler


def test_a_head_at_the_field_limit_passes(w: World, client):
    fields = [(b"x-f%d" % i, b"v") for i in range(HEAD_FIELDS - 1)]  # with :status
    w.up.handler = responding(fields)
    with client.stream("GET", watch("bad")) as r:
        assert r.status_code == 200 and r.headers["x-f0"] == "v"


def test_a_head_over_the_field_limit_gets_502_naming_the_tenant(w: World, client):
    w.up.handler = responding([(b"x-f%d" % i, b"v") for i in range(HEAD_FIELDS)])
    r = client.get(watch("bad"))
    assert r.status_code == 502
    message = status_of(r)["message"]
    assert "tenant h2" in message and f"over {HEAD_FIELDS} fields" in message
    w.up.wait(lambda: w.up.resets == [(0, 1, ErrorCodes.CANCEL)], what="RST_STREAM CANCEL")
    with client.stream("GET", watch("b")) as r:  # the connection serves on
        assert r.status_code == 200 and names(r.iter_lines(), 1) == ["pod-0"]
    assert len(w.up.connections) == 1


def test_a_head_over_the_byte_limit_gets_502_naming_the_tenant(w: World, client):
    w.up.handler = responding([(b"x-big", b"b" * (HEAD_BYTES * 2))])
    start = time.monotonic()
    r = client.get(watch("bad"))
    assert r.status_code == 502
    assert time.monotonic() - start < RESPONSE_TIMEOUT  # refused at once, not at the deadline
    message = status_of(r)["message"]
    assert "tenant h2" in message and f"over {HEAD_BYTES} bytes" in message
    w.up.wait(lambda: w.up.connections[0].closed, what="connection closed")  # hpack state
    with client.stream("GET", watch("b")) as r:
        assert r.status_code == 200
    assert [r.conn for r in w.up.h2_requests()] == [0, 1]


def test_no_head_in_time_gets_504_and_the_stream_is_cancelled(w: World, client):
    w.up.handler = hang
    start = time.monotonic()
    r = client.get(watch("a"))
    assert r.status_code == 504
    assert "tenant h2 did not answer in time" in status_of(r)["message"]
    assert RESPONSE_TIMEOUT * 0.9 < time.monotonic() - start < RESPONSE_TIMEOUT * 3
    w.up.wait(lambda: w.up.resets == [(0, 1, ErrorCodes.CANCEL)], what="RST_STREAM CANCEL")
    assert not w.up.http1_requests()  # not retried


# -- resets and GOAWAY ----------------------------------------------------------------------


def test_refused_stream_is_retried_once_over_http11(w: World, client):
    async def refuse(stream: H2Stream) -> None:
        stream.reset(ErrorCodes.REFUSED_STREAM)

    w.up.handler = refuse
    with client.stream("GET", watch("a")) as r:
        assert r.status_code == 200
        assert names(r.iter_lines(), 2) == ["pod-0", "pod-1"]
    [h2], [h1] = w.up.h2_requests(), w.up.http1_requests()
    assert h1.path == h2.path == b"/api/v1/namespaces/a/pods?watch=1"
    assert h1.get(b"authorization") == b"Bearer " + TOKEN
    assert h1.get(b"impersonate-user") == b"alice@example.com"


@pytest.mark.parametrize(
    "code", [ErrorCodes.INTERNAL_ERROR, ErrorCodes.CANCEL, ErrorCodes.ENHANCE_YOUR_CALM]
)
def test_any_other_reset_before_the_head_gets_502(w: World, client, code):
    async def reset(stream: H2Stream) -> None:
        stream.reset(code)

    w.up.handler = reset
    r = client.get(watch("a"))
    assert r.status_code == 502
    assert "tenant h2" in status_of(r)["message"]
    assert len(w.up.h2_requests()) == 1 and not w.up.http1_requests()


def test_goaway_retries_the_unprocessed_stream_and_keeps_the_others(w: World, client):
    first: list[H2Stream] = []

    async def handler(stream: H2Stream) -> None:
        if b"/first/" in stream.path:
            first.append(stream)
            await stream.watch(interval=0.02)
        elif b"/second/" in stream.path:
            stream.conn.goaway(first[0].stream_id)  # the second was never processed
            await stream.until_gone()
        else:
            await stream.watch()

    w.up.handler = handler
    with client.stream("GET", watch("first")) as a:
        lines = a.iter_lines()
        assert names(lines, 1) == ["pod-0"]
        with client.stream("GET", watch("second")) as b:
            assert b.status_code == 200  # retried over HTTP/1.1
            assert names(b.iter_lines(), 1) == ["pod-0"]
        [retried] = w.up.http1_requests()
        assert retried.path == b"/api/v1/namespaces/second/pods?watch=1"
        assert names(lines, 5) == [f"pod-{i}" for i in range(1, 6)]  # goes on after GOAWAY
        with client.stream("GET", watch("third")) as c:
            assert names(c.iter_lines(), 1) == ["pod-0"]
        third = next(r for r in w.up.requests if b"/third/" in r.path)
        assert third.protocol == "h2" and third.conn != first[0].conn.index  # a new one
        assert names(lines, 1) == ["pod-6"]


# -- failures after the head ----------------------------------------------------------------


def after_two_events(then):
    async def handler(stream: H2Stream) -> None:
        stream.respond()
        await stream.send(b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"pod-0"}}}\n')
        await stream.send(b'{"type":"ADDED","object":{"kind":"Pod","metadata":{"name":"pod-1"}}}\n')
        then(stream)
        await stream.until_gone()

    return handler


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(lambda s: s.reset(ErrorCodes.INTERNAL_ERROR), id="reset"),
        pytest.param(lambda s: s.conn.abort(), id="connection-lost"),
    ],
)
def test_a_failure_after_the_head_breaks_the_clients_stream(w: World, client, how):
    w.up.handler = after_two_events(how)
    with client.stream("GET", watch("a")) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert names(lines, 2) == ["pod-0", "pod-1"]
        with pytest.raises(httpx.RemoteProtocolError):  # not a clean end of the chunks
            list(lines)


def test_a_stream_ended_by_the_tenant_ends_the_clients_stream_cleanly(w: World, client):
    w.up.handler = after_two_events(lambda s: s.end())
    with client.stream("GET", watch("a")) as r:
        lines = r.iter_lines()
        assert names(lines, 2) == ["pod-0", "pod-1"]
        assert list(lines) == []


# -- a broken or hostile connection ---------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"HTTP/1.1 400 Bad Request\r\n\r\n", id="http1-answer"),
        # a DATA frame on stream 0: a connection error (RFC 9113 §6.1)
        pytest.param(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", id="data-on-stream-0"),
    ],
)
def test_a_protocol_violation_closes_the_connection(w: World, client, bad):
    async def handler(stream: H2Stream) -> None:
        if b"/bad/" in stream.path:
            stream.conn.write_raw(bad)
            await stream.until_gone()
        else:
            await stream.watch()

    w.up.handler = handler
    with client.stream("GET", watch("ok")) as ok:
        lines = ok.iter_lines()
        assert names(lines, 1) == ["pod-0"]
        start = time.monotonic()
        r = client.get(watch("bad"))
        assert r.status_code == 502 and "tenant h2" in status_of(r)["message"]
        assert time.monotonic() - start < RESPONSE_TIMEOUT  # at once, not at the deadline
        with pytest.raises(httpx.RemoteProtocolError):  # answered: broken, not ended
            list(lines)
    w.up.wait(lambda: w.up.connections[0].closed, what="connection 0 closed")
    with client.stream("GET", watch("next")) as r:
        assert names(r.iter_lines(), 1) == ["pod-0"]
    assert w.up.requests[-1].conn == 1


@pytest.mark.parametrize("answered", [False, True], ids=["before-head", "after-head"])
def test_a_flood_of_pings_closes_the_connection(w: World, client, answered):
    async def handler(stream: H2Stream) -> None:
        if answered:
            stream.respond()
            await stream.send(b'{"type":"ADDED","object":{"metadata":{"name":"pod-0"}}}\n')
        await stream.conn.flood_pings(20000)
        await stream.until_gone()

    w.up.handler = handler
    start = time.monotonic()
    if answered:
        with client.stream("GET", watch("a")) as r:
            lines = r.iter_lines()
            assert names(lines, 1) == ["pod-0"]
            with pytest.raises(httpx.RemoteProtocolError):
                list(lines)
    else:
        r = client.get(watch("a"))
        assert r.status_code == 502 and "tenant h2" in status_of(r)["message"]
    assert time.monotonic() - start < RESPONSE_TIMEOUT  # cut by the bound, not a deadline
    w.up.wait(lambda: w.up.connections[0].closed, what="connection closed")


def test_a_flood_of_empty_data_frames_closes_the_connection(w: World, client):
    async def handler(stream: H2Stream) -> None:
        stream.respond()
        for _ in range(20000):
            await stream.send(b"")
        await stream.until_gone()

    w.up.handler = handler
    with client.stream("GET", watch("a")) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            list(r.iter_lines())
    w.up.wait(lambda: w.up.connections[0].closed, what="connection closed")


# -- tenants without h2, credentials, configuration -----------------------------------------


def test_a_tenant_without_h2_gets_watches_over_http11_and_is_remembered(w: World, client):
    with client.stream("GET", watch("a", "h1only")) as a:
        assert names(a.iter_lines(), 1) == ["pod-0"]
        # the probe (ALPN chose http/1.1, closed) and the watch's own connection
        assert [c.alpn for c in w.h1.connections] == ["http/1.1", "http/1.1"]
        with client.stream("GET", watch("b", "h1only")) as b:
            assert names(b.iter_lines(), 1) == ["pod-0"]
        assert len(w.h1.connections) == 3  # no second probe
    assert [r.protocol for r in w.h1.requests] == ["http/1.1", "http/1.1"]


def test_a_tenant_without_h2_is_asked_again_once_the_recheck_time_passed(w: World, client):
    """Remembered for `h1_recheck` seconds, not for as long as the route stands: its API
    server may be upgraded (or a proxy before it changed) to offer h2."""
    with client.stream("GET", watch("a", "h1only")) as a:
        assert names(a.iter_lines(), 1) == ["pod-0"]
    assert len(w.h1.connections) == 2  # the probe and the watch's own connection
    pool = w.gw.gateway.forwarder._multiplexed["h1only"]
    assert pool.h1_until - time.monotonic() > 0.9 * pool.h1_recheck
    w.gw.call(lambda: setattr(pool, "h1_until", time.monotonic() - 1))  # the time passed
    with client.stream("GET", watch("b", "h1only")) as b:
        assert names(b.iter_lines(), 1) == ["pod-0"]
    assert [c.alpn for c in w.h1.connections][2:] == ["http/1.1", "http/1.1"]  # asked again


def test_a_request_http2_refuses_to_frame_goes_over_http11(w: World, client, monkeypatch):
    """A field the h2 library refuses to send (here: `TE` other than ``trailers``, which
    `request_fields` never lets through) must not fail the watch: it goes over HTTP/1.1.
    The field is added where the gateway hands its fields to h2 (a compiled
    `request_fields` is called directly, so it cannot be wrapped)."""
    from h2.connection import H2Connection

    send_headers = H2Connection.send_headers

    def with_te(self, stream_id, headers, *args, **kwargs):
        if self.config.client_side:  # the gateway's side, not the stand-in tenant's
            headers = [*headers, (b"te", b"gzip")]
        return send_headers(self, stream_id, headers, *args, **kwargs)

    monkeypatch.setattr(H2Connection, "send_headers", with_te)
    with client.stream("GET", watch("a")) as r:
        assert r.status_code == 200
        assert names(r.iter_lines(), 1) == ["pod-0"]
    assert not w.up.h2_requests()
    [plain] = w.up.http1_requests()
    assert plain.path == b"/api/v1/namespaces/a/pods?watch=1"


UNAUTHORIZED = b'{"kind":"Status","apiVersion":"v1","status":"Failure","code":401}'


def test_a_401_to_a_watch_blames_the_gateways_credential(w: World, client):
    async def unauthorized(stream: H2Stream) -> None:
        stream.respond(401)
        await stream.send(UNAUTHORIZED, end=True)

    w.up.handler = unauthorized
    r = client.get(watch("a"))
    assert r.status_code == 502
    message = status_of(r)["message"]
    assert "gateway's own credential for tenant h2 was rejected" in message
    assert "not a problem with your login" in message


def test_http2_for_watches_off_keeps_watches_on_http11(tmp_path, issuer, pki, token):
    ca, leaf = pki
    up = H2ScriptedUpstream(leaf.cert_file, leaf.key_file)
    try:
        config = config_for(tmp_path, issuer, ca, {"h2": up}, http2_for_watches=False)
        with (
            GatewayThread(tmp_path, config) as gw,
            httpx.Client(
                base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=5
            ) as c,
            c.stream("GET", watch("a")) as r,
        ):
            assert names(r.iter_lines(), 1) == ["pod-0"]
        assert [r.protocol for r in up.requests] == ["http/1.1"]
        assert [c.alpn for c in up.connections] == ["http/1.1"]
    finally:
        up.stop()


def test_a_watch_to_a_tenant_nothing_listens_for_gets_502(tmp_path, issuer, pki, token, caplog):
    """The HTTP/2 connect is refused: the watch is answered with the connect failure, as an
    expected one (not as an error the pool did not foresee)."""
    ca, _ = pki
    with socket.socket() as vacant:  # a port nothing listens on once it is closed
        vacant.bind(("127.0.0.1", 0))
        port = vacant.getsockname()[1]
    config = viewer_config(
        tmp_path,
        issuer.issuer,
        {"gone": f"https://127.0.0.1:{port}"},
        ca_file=ca.cert_file,
        token=TOKEN.decode(),
    )
    with (
        GatewayThread(tmp_path, config) as gw,
        httpx.Client(
            base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as c,
    ):
        r = c.get(watch("a", "gone"))
    assert r.status_code == 502
    assert status_of(r)["message"] == "the API server of tenant gone is unreachable"
    assert "tenant gone upstream" in caplog.text and "connect failed: [Errno 111]" in caplog.text
    errors = [x for x in caplog.records if x.levelno >= logging.ERROR]
    assert not [x for x in errors if x.name.startswith("vgate")], caplog.text  # unforeseen


# -- the health check of an HTTP/2 connection -----------------------------------------------


def _quiet_after_one_event(*, dead: bool):
    """A watch that sends one event and then nothing; with `dead` the tenant also stops
    reading (a node gone: not even a PING is answered)."""

    async def handler(stream: H2Stream) -> None:
        stream.respond()
        await stream.send(event(0))
        stream.conn.silent = dead
        await stream.until_gone()

    return handler


@pytest.mark.parametrize("dead", [True, False], ids=["dead-peer", "quiet-peer"])
def test_a_dead_connection_is_found_by_a_ping_and_a_quiet_one_is_kept(
    tmp_path, issuer, pki, token, dead
):
    """After `http2_ping_after_seconds` without a frame a PING goes out: a tenant that does
    not answer within `http2_ping_timeout_seconds` has its watches broken (their clients
    reconnect); one that answers keeps them, however long no event comes."""
    ca, leaf = pki
    up = H2ScriptedUpstream(leaf.cert_file, leaf.key_file)
    up.handler = _quiet_after_one_event(dead=dead)
    try:
        config = config_for(
            tmp_path,
            issuer,
            ca,
            {"h2": up},
            http2_ping_after_seconds=0.3,
            http2_ping_timeout_seconds=0.3,
        )
        with (
            GatewayThread(tmp_path, config) as gw,
            httpx.Client(
                base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=5
            ) as c,
            c.stream("GET", watch("a")) as r,
        ):
            lines = r.iter_lines()
            assert names(lines, 1) == ["pod-0"]
            started = time.monotonic()
            if dead:
                with pytest.raises(httpx.RemoteProtocolError):  # a broken stream, not an end
                    list(lines)
                assert time.monotonic() - started < 3.0
            else:
                time.sleep(1.5)  # several PING rounds with no event
                (conn,) = up.connections
                assert not conn.closed
                up.call(lambda: conn.streams and next(iter(conn.streams.values())).end())
                assert list(lines) == []  # the tenant's clean end, relayed
    finally:
        up.stop()
