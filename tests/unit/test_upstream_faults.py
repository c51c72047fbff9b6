"""What a broken or hostile tenant API server can do to the gateway, over TLS: endless or
oversized response heads and trailers are cut (a 502 Status naming the tenant), every
response head has a deadline (watches and upgrades included), and a 401 to a request the
gateway impersonated blames the gateway's credential, not the user. A 403 is the user's
RBAC and passes through untouched.

The upstreams are fault-injection stand-ins (tests/support/hostile.py, scripted.py) with a
real TLS listener; the gateway is the real one, in a thread."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config
from tests.support.hostile import HOSTILE
from tests.support.pki import TestCA
from tests.support.scripted import ScriptedUpstream, server_context

RESPONSE_TIMEOUT = 1.0
HEAD_LIMIT = 65536  # the default `upstream.max_response_head_bytes`


@pytest.fixture(scope="module")
def world(
    tmp_path_factory, issuer: CraftingIssuer
) -> Iterator[tuple[GatewayThread, ScriptedUpstream, ScriptedUpstream]]:
    d = tmp_path_factory.mktemp("faults")
    ca = TestCA(d / "pki")
    leaf = ca.issue("upstream", ["127.0.0.1"])
    good = ScriptedUpstream(server_context(leaf.cert_file, leaf.key_file))
    bad = ScriptedUpstream(server_context(leaf.cert_file, leaf.key_file))
    config = viewer_config(
        d,
        issuer.issuer,
        {name: f"https://127.0.0.1:{up.port}" for name, up in (("good", good), ("hostile", bad))},
        ca_file=ca.cert_file,
        upstream={"response_timeout_seconds": RESPONSE_TIMEOUT},
    )
    with GatewayThread(d, config) as gw:
        yield gw, good, bad
    good.stop()
    bad.stop()


@pytest.fixture
def client(world, issuer: CraftingIssuer) -> Iterator[httpx.Client]:
    gw, _, bad = world
    bad.handler = bad.default
    token = issuer.sign(issuer.claims())
    with httpx.Client(
        base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        yield c


def status_of(r: httpx.Response) -> dict:
    body = r.json()
    assert body["kind"] == "Status", body
    return body


@pytest.mark.parametrize("mode", ["endless-value", "endless-lines"])
def test_endless_response_head_is_cut_with_502_naming_the_tenant(world, client, mode) -> None:
    _, _, bad = world
    bad.handler = HOSTILE[mode]
    start = time.monotonic()
    r = client.get("/clusters/hostile/api/v1/pods")
    assert r.status_code == 502
    message = status_of(r)["message"]
    assert "tenant hostile" in message and f"over {HEAD_LIMIT} bytes" in message
    assert time.monotonic() - start < RESPONSE_TIMEOUT  # cut at the size, not the deadline
    assert client.get("/clusters/good/api/v1/pods").status_code == 200


def test_head_just_under_the_limit_in_small_reads_after_100_continue_passes(world, client) -> None:
    _, _, bad = world
    filler = b"X-Filler: " + b"f" * (HEAD_LIMIT - 200) + b"\r\n"

    async def slow_but_fine(head, reader, writer) -> bool:
        answer = (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
            + filler
            + b"Content-Length: 2\r\n\r\n{}"
        )
        for i in range(0, len(answer), 997):  # pieces that split the blank lines too
            writer.write(answer[i : i + 997])
            await writer.drain()
        return True

    bad.handler = slow_but_fine
    r = client.get("/clusters/hostile/api/v1/pods")
    assert r.status_code == 200 and r.content == b"{}"
    assert len(r.headers["x-filler"]) == HEAD_LIMIT - 200


def test_endless_trailer_cuts_the_stream(world, client) -> None:
    _, _, bad = world
    bad.handler = HOSTILE["endless-trailer"]
    with pytest.raises(httpx.RemoteProtocolError):  # the body never ends cleanly
        client.get("/clusters/hostile/api/v1/pods").read()
    assert client.get("/clusters/good/api/v1/pods").status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n",
    ],
    ids=["content-length", "chunked-watch"],
)
def test_a_tenant_killed_mid_response_breaks_the_clients_response(world, client, head) -> None:
    """The API server dies (its connection reset) after part of a body over HTTP/1.1: the
    client sees a broken response, never a clean, silently short one (a watch: client-go
    watches again), at once; the next request gets a new connection and its answer."""
    _, _, bad = world

    async def killed(head_, reader, writer) -> bool:
        writer.write(head + b'{"kind":')
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()  # RST: the process is gone
        return False

    bad.handler = killed
    path = "/clusters/hostile/api/v1/pods" + ("?watch=1" if b"chunked" in head else "")
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", path) as r:
        assert r.status_code == 200
        r.read()
    assert time.monotonic() - started < 2.0
    bad.handler = bad.default
    assert client.get("/clusters/hostile/api/v1/pods").status_code == 200


@pytest.mark.parametrize("mode", ["hang", "dribble"])
def test_a_watch_gets_504_when_no_head_comes_in_time(world, client, mode) -> None:
    _, _, bad = world
    bad.handler = HOSTILE[mode]
    start = time.monotonic()
    r = client.get("/clusters/hostile/api/v1/pods?watch=true", timeout=RESPONSE_TIMEOUT * 5)
    assert r.status_code == 504
    assert "tenant hostile did not answer in time" in status_of(r)["message"]
    assert RESPONSE_TIMEOUT * 0.9 < time.monotonic() - start < RESPONSE_TIMEOUT * 3


def test_an_upgrade_gets_504_when_no_head_comes_in_time(world, issuer) -> None:
    gw, _, bad = world
    bad.handler = HOSTILE["hang"]
    token = issuer.sign(issuer.claims())
    with socket.create_connection(("127.0.0.1", gw.port), timeout=RESPONSE_TIMEOUT * 5) as s:
        s.sendall(
            b"POST /clusters/hostile/api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\n"
            b"Host: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
            b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
        )
        start = time.monotonic()
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert RESPONSE_TIMEOUT * 0.9 < time.monotonic() - start < RESPONSE_TIMEOUT * 3


def test_a_watch_on_a_pooled_connection_to_a_tenant_that_hangs_gets_504(world, client) -> None:
    _, _, bad = world
    assert client.get("/clusters/hostile/api/v1/pods").status_code == 200  # pools one

    async def hang_after_first(head, reader, writer) -> bool:
        await asyncio.sleep(3600)
        return False

    bad.handler = hang_after_first
    r = client.get("/clusters/hostile/api/v1/pods?watch=1", timeout=RESPONSE_TIMEOUT * 5)
    assert r.status_code == 504


UNAUTHORIZED = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
).encode()
FORBIDDEN = json.dumps(
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": "Forbidden",
        "code": 403,
        "message": 'pods is forbidden: User "alice" cannot list resource "pods"',
    }
).encode()


def answer(code: int, body: bytes):
    async def handler(head, reader, writer) -> bool:
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (code, len(body), body)
        )
        await writer.drain()
        return True

    return handler


def test_401_from_the_tenant_blames_the_gateway_credential_until_it_works(world, client) -> None:
    _, _, bad = world
    bad.handler = answer(401, UNAUTHORIZED)
    for _ in range(2):
        r = client.get("/clusters/hostile/api/v1/pods")
        assert r.status_code == 502
        message = status_of(r)["message"]
        assert "gateway's own credential for tenant hostile" in message
        assert "not a problem with your login" in message
    metrics = httpx.get(f"{world[0].metrics_url}/metrics").text
    assert 'vgate_upstream_credential_failures_total{tenant="hostile"} 2.0' in metrics
    ready = httpx.get(f"{world[0].metrics_url}/readyz?verbose")
    assert ready.status_code in (200, 503)  # one tenant does not make the gateway unready
    assert "note: tenant hostile: the gateway's credential is rejected" in ready.text
    assert "readyz check passed" in ready.text
    # the public listener answers anyone: its readiness names no tenant (nobody learns
    # which tenants exist without a valid token), only the metrics listener's does
    public = httpx.get(f"{world[0].url}/readyz?verbose")
    assert public.status_code == 200 and "readyz check passed" in public.text
    assert "hostile" not in public.text and "note:" not in public.text
    bad.handler = bad.default  # the credential works again
    assert client.get("/clusters/hostile/api/v1/pods").status_code == 200
    assert "tenant hostile" not in httpx.get(f"{world[0].metrics_url}/readyz?verbose").text


def test_403_from_the_tenant_is_the_users_rbac_and_passes_untouched(world, client) -> None:
    _, _, bad = world
    bad.handler = answer(403, FORBIDDEN)
    r = client.get("/clusters/hostile/api/v1/pods")
    assert r.status_code == 403 and r.content == FORBIDDEN


def _close_delimited(status: bytes, body: bytes):
    """Answers with neither Content-Length nor Transfer-Encoding: the body ends where the
    connection does (RFC 9112 §6.3; Go's x/net/websocket refuses a handshake this way)."""

    async def handler(head: bytes, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n\r\n" + body)
        await writer.drain()
        return False  # the server closes: the end of the body

    return handler


@pytest.mark.parametrize("upgrade", [False, True])
def test_a_body_delimited_by_the_close_arrives_whole_and_properly_ended(
    world, issuer, upgrade: bool
) -> None:
    gw, _, bad = world
    body = b"x" * 200_000 + b"the end"
    bad.handler = _close_delimited(b"403 Forbidden", body)
    token = issuer.sign(issuer.claims()).encode()
    extra = (
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        if upgrade
        else b""
    )
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"GET /clusters/hostile/api/v1/pods?watch=1 HTTP/1.1\r\nHost: gw.test\r\n"
            b"Authorization: Bearer " + token + b"\r\n" + extra + b"\r\n"
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, chunked = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and b"transfer-encoding: chunked" in head.lower()
    assert chunked.endswith(b"0\r\n\r\n"), "the client saw a broken stream, not an end"
    got, rest = b"", chunked
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        got, rest = got + rest[:n], rest[n + 2 :]
    assert got == body


def test_a_response_nobody_asked_for_never_answers_the_next_request(world, client) -> None:
    """A tenant that sends a second response after the first (in the same read): that
    connection must not carry another user's request, whose answer would be read as the
    unasked-for response's body."""
    _, _, bad = world
    sent = []

    async def two_answers(head: bytes, reader, writer) -> bool:
        body = b'{"kind":"List","items":[]}'
        one = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        if not sent:
            sent.append(head)
            writer.write(
                one % (len(body), body) + b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\nx"
            )
        else:
            writer.write(one % (len(body), body))
        await writer.drain()
        return True

    bad.handler = two_answers
    first = client.get("/clusters/hostile/api/v1/pods")
    assert first.status_code == 200 and first.json()["kind"] == "List"
    time.sleep(0.2)
    for _ in range(3):
        again = client.get("/clusters/hostile/api/v1/pods")
        assert again.status_code == 200 and again.json() == {"kind": "List", "items": []}


def test_a_tenant_certificate_not_signed_by_its_ca_is_a_502_saying_so(tmp_path, issuer) -> None:
    """The tenant's API server starts serving a certificate its configured CA did not sign
    (a re-issued certificate, a man in the middle): new connections fail closed with a 502
    `Status` naming the tenant and the certificate, for plain requests and watches (which
    would go over HTTP/2) alike; nothing is sent. Before, it read "is unreachable". Once the
    right certificate is back, the tenant is reached again without a restart."""
    ca, rogue_ca = TestCA(tmp_path / "pki"), TestCA(tmp_path / "rogue")
    leaf, rogue = ca.issue("upstream", ["127.0.0.1"]), rogue_ca.issue("upstream", ["127.0.0.1"])
    context = server_context(leaf.cert_file, leaf.key_file)
    up = ScriptedUpstream(context)

    async def answer_and_close(head, reader, writer) -> bool:
        await ScriptedUpstream.default(head, reader, writer)
        return False  # every request on a new connection: a new handshake

    up.handler = answer_and_close
    config = viewer_config(
        tmp_path, issuer.issuer, {"t1": f"https://127.0.0.1:{up.port}"}, ca_file=ca.cert_file
    )
    token = issuer.sign(issuer.claims())
    try:
        with (
            GatewayThread(tmp_path, config) as gw,
            httpx.Client(
                base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            ) as c,
        ):
            assert c.get("/clusters/t1/api/v1/pods").status_code == 200
            context.load_cert_chain(str(rogue.cert_file), str(rogue.key_file))
            heads = len(up.heads)
            for path in ("/clusters/t1/api/v1/pods", "/clusters/t1/api/v1/pods?watch=1"):
                r = c.get(path)
                assert r.status_code == 502, r.text
                message = status_of(r)["message"]
                assert message.startswith(
                    "the API server of tenant t1 presented a TLS certificate the gateway "
                    "does not trust ("
                ), message
            assert len(up.heads) == heads  # nothing reached the impostor
            context.load_cert_chain(str(leaf.cert_file), str(leaf.key_file))
            assert c.get("/clusters/t1/api/v1/pods").status_code == 200
    finally:
        up.stop()
