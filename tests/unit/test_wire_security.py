"""Issue 13 on the wire: what a client writes byte for byte may not change who a request
runs as, reach the tenant, or exhaust the gateway.

Raw sockets throughout (a client library would normalise the very bytes under test), a
real gateway in-process, and a scripted upstream that records every request head that
reaches it: "refused before anything leaves" is checked as "the upstream saw no head".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.identity import Grant
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread
from tests.support.scripted import ScriptedUpstream

FIRST_BYTE = 0.6
HEAD_TIMEOUT = 1.2


def _config(d: Path, issuer: CraftingIssuer, upstream: ScriptedUpstream, **limits) -> dict:
    (d / "policies").mkdir(exist_ok=True)
    (d / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (d / "token").write_text("upstream-secret\n")
    return {
        "routing": {"base_domain": "k8s.test", "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {
                    "issuer": issuer.issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "username_prefix": "oidc:",
                }
            ]
        },
        "policies": str(d / "policies"),
        "audit": {"file": str(d / "audit.log")},
        "limits": {
            "first_byte_timeout_seconds": FIRST_BYTE,
            "request_head_timeout_seconds": HEAD_TIMEOUT,
            "keepalive_timeout_seconds": 5,
            **limits,
        },
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(d / "token"),
            }
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("wire")
    with GatewayThread(d, _config(d, issuer, upstream)) as gw:
        yield gw


@pytest.fixture(scope="module")
def token(issuer: CraftingIssuer) -> bytes:
    return issuer.sign(issuer.claims(groups=["developers"])).encode()


@pytest.fixture(autouse=True)
def reset_upstream(upstream: ScriptedUpstream) -> None:
    upstream.handler = upstream.default
    upstream.heads.clear()


def _connect(gw: GatewayThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gw.port), timeout=5)


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the gateway sends until it closes (or `timeout` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, ConnectionResetError):
        return data


def _exchange(gw: GatewayThread, raw: bytes, timeout: float = 5.0) -> bytes:
    with _connect(gw) as s:
        s.sendall(raw)
        return _read_all(s, timeout)


def _status(reply: bytes) -> int:
    assert reply.startswith(b"HTTP/1.1 "), reply[:200]
    return int(reply[9:12])


def _body(reply: bytes) -> dict:
    return json.loads(reply.partition(b"\r\n\r\n")[2])


def _get(
    token: bytes,
    *,
    target: bytes = b"/clusters/live/api",
    host: bytes = b"gw.test",
    extra: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    return (
        b"GET "
        + target
        + b" "
        + version
        + b"\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + token
        + b"\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
    )


def _upstream_header_names(head: bytes) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")[1:] if line]


def test_a_valid_request_goes_through(gateway, token, upstream) -> None:
    """The control: what the tests below refuse differs from this in one thing only."""
    assert _status(_exchange(gateway, _get(token))) == 200
    assert len(upstream.heads) == 1


# -- 2. upgrades: only what kubectl tunnels; bytes before the 101 are bounded --------------


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        b"Upgrade: HTTP/2.0\r\n",
        b"Upgrade: TLS/1.2\r\n",
        b"Upgrade: SPDY/3\r\n",
        b"Upgrade: websocket, h2c\r\n",
        b"Upgrade: websocket\r\nUpgrade: h2c\r\n",
        b"Upgrade: irc/6.9\r\n",
        b"Upgrade: websockets\r\n",
    ],
)
def test_upgrades_other_than_websocket_and_spdy_are_refused(
    gateway, token, upstream, upgrade: bytes
) -> None:
    raw = (
        b"GET /clusters/live/api/v1/pods?watch=true HTTP/1.1\r\nHost: gw.test\r\n"
        b"Authorization: Bearer "
        + token
        + b"\r\nConnection: Upgrade\r\n"
        + upgrade
        + b"\r\n"
        + b"x" * 4096
    )
    reply = _exchange(gateway, raw)
    assert _status(reply) == 400
    assert _body(reply)["kind"] == "Status" and "unsupported upgrade" in _body(reply)["message"]
    assert upstream.heads == []


def test_connect_is_refused(gateway, token, upstream) -> None:
    raw = (
        b"CONNECT live.k8s.test:443 HTTP/1.1\r\nHost: live.k8s.test:443\r\n"
        b"Authorization: Bearer " + token + b"\r\n\r\n"
    )
    assert _status(_exchange(gateway, raw)) == 405
    assert upstream.heads == []


@pytest.mark.parametrize("upgrade", [b"websocket", b"SPDY/3.1"])
def test_kubectl_upgrades_still_tunnel(gateway, token, upstream, upgrade: bytes) -> None:
    async def echo(head, reader, writer) -> bool:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
            b"Upgrade: " + upgrade + b"\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data.upper())
        return False

    upstream.handler = echo
    with _connect(gateway) as s:
        s.sendall(
            b"POST /clusters/live/api/v1/namespaces/d/pods/p/exec?command=sh HTTP/1.1\r\n"
            b"Host: gw.test\r\nAuthorization: Bearer "
            + token
            + b"\r\nConnection: Upgrade\r\nUpgrade: "
            + upgrade
            + b"\r\n\r\nhello"
        )
        data = b""
        while b"HELLO" not in data:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 101")
    assert b"upgrade: " + upgrade.lower() in upstream.heads[0].lower()


def test_bytes_after_an_upgrade_the_upstream_never_accepts_are_bounded(
    gateway, token, upstream
) -> None:
    """The upstream answers the upgrade request with a never-ending watch instead of 101:
    what the client keeps sending is held up to TUNNEL_BUFFER_LIMIT (plus one read), then
    the gateway stops reading — it does not grow by what the client writes."""
    from gateway.http.connection import TUNNEL_BUFFER_LIMIT

    answered = threading.Event()

    async def watch_instead(head, reader, writer) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n"
        )
        await writer.drain()
        answered.set()
        await reader.read()  # until the gateway closes (the client left)
        return False

    upstream.handler = watch_instead
    with _connect(gateway) as s:
        s.sendall(
            b"GET /clusters/live/api/v1/pods?watch=true HTTP/1.1\r\nHost: gw.test\r\n"
            b"Authorization: Bearer "
            + token
            + b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        assert answered.wait(5)
        s.settimeout(3)
        sent, chunk = 0, b"\0" * 65536
        try:
            while sent < 100 << 20:
                sent += s.send(chunk)
        except TimeoutError:
            pass
        assert sent < 100 << 20, "the gateway kept reading"

        def held() -> list[int]:
            return [
                sum(map(len, c.tunnel_buffer))
                for c in gateway.running.connections
                if c.tunnel_buffer is not None
            ]

        buffered = gateway.call(held)
        assert buffered and max(buffered) <= TUNNEL_BUFFER_LIMIT + 256 * 1024, buffered


# -- 3. deadlines and the cap on unauthenticated connections ------------------------------


def test_a_trickled_head_is_cut_at_the_head_deadline(gateway, token, upstream) -> None:
    raw = _get(token)
    with _connect(gateway) as s:
        started = time.monotonic()
        s.settimeout(0.2)
        reply = b""
        for byte in raw:
            try:
                s.sendall(bytes([byte]))
                reply += s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if reply:
                break
        reply += _read_all(s, 2)
    elapsed = time.monotonic() - started
    assert _status(reply) == 408 and _body(reply)["reason"] == "Timeout"
    assert HEAD_TIMEOUT * 0.9 <= elapsed <= HEAD_TIMEOUT * 3, elapsed
    assert upstream.heads == []


def test_half_sent_heads_are_closed(gateway, upstream) -> None:
    socks = [_connect(gateway) for _ in range(20)]
    for s in socks:
        s.sendall(b"GET /clusters/live/api HTTP/1.1\r\nHost: gw.test\r\nX-Slow: ")
    started = time.monotonic()
    replies = [_read_all(s, HEAD_TIMEOUT * 4) for s in socks]
    assert time.monotonic() - started <= HEAD_TIMEOUT * 4
    assert all(_status(r) == 408 for r in replies)
    for s in socks:
        s.close()
    assert upstream.heads == []


def test_a_silent_connection_is_closed_after_the_first_byte_deadline(gateway) -> None:
    with _connect(gateway) as s:
        started = time.monotonic()
        assert _read_all(s, FIRST_BYTE * 6) == b""
        assert FIRST_BYTE * 0.9 <= time.monotonic() - started <= FIRST_BYTE * 5


def test_a_slow_head_within_the_deadline_is_served(gateway, token) -> None:
    raw = _get(token)
    with _connect(gateway) as s:
        s.sendall(raw[:20])
        time.sleep(HEAD_TIMEOUT / 2)
        s.sendall(raw[20:])
        assert _status(_read_all(s)) == 200


def test_unauthenticated_connections_per_address_are_capped(
    tmp_path, issuer, upstream, token
) -> None:
    cap = 3
    config = _config(
        tmp_path,
        issuer,
        upstream,
        max_unauthenticated_connections_per_ip=cap,
        first_byte_timeout_seconds=30,
        request_head_timeout_seconds=30,
    )
    with GatewayThread(tmp_path, config) as gw:
        held = [_connect(gw) for _ in range(cap)]
        time.sleep(0.1)
        with _connect(gw) as over:  # refused at once, nothing parsed
            reply = _read_all(over, 2)
        assert _status(reply) == 429 and "unauthenticated" in _body(reply)["message"]
        # a bad token does not authenticate a connection: it still counts
        held[0].sendall(
            b"GET /clusters/live/api HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n"
        )
        assert b" 401 " in held[0].recv(65536)
        with _connect(gw) as over:
            assert _status(_read_all(over, 2)) == 429
        # a valid credential does: that connection leaves the count, a new one is admitted
        held[1].sendall(_get(token).replace(b"Connection: close\r\n", b""))
        assert b" 200 " in held[1].recv(65536)
        time.sleep(0.1)
        extra = _connect(gw)
        extra.sendall(_get(token))
        assert _status(_read_all(extra)) == 200
        # closing frees a place too
        held[2].close()
        time.sleep(0.1)
        with _connect(gw) as again:
            again.sendall(_get(token))
            assert _status(_read_all(again)) == 200
        for s in (*held, extra):
            s.close()


# -- 4. nothing the client says about its address reaches the tenant ----------------------

FORWARDING = [
    b"X-Real-Ip",
    b"x-real-ip",
    b"Forwarded",
    b"X-Forwarded-Host",
    b"X-Forwarded-Proto",
    b"X-Forwarded-Port",
    b"X-Forwarded-Prefix",
    b"X-Forwarded-Server",
    b"X-Forwarded-Ssl",
    b"X-Forwarded-For",
    b"X-FORWARDED-FOR",
    b"X-Client-Ip",
    b"Client-Ip",
    b"True-Client-Ip",
    b"CF-Connecting-IP",
    b"CF-Connecting-IPv6",
    b"Fastly-Client-IP",
    b"X-Cluster-Client-IP",
    b"X-Original-Forwarded-For",
    b"X-Original-Host",
    b"X-Originating-IP",
    b"X-Remote-Addr",
    b"X-Remote-IP",
    b"X-Azure-ClientIP",
    b"X-Azure-SocketIP",
    b"X-Envoy-External-Address",
    b"X-ProxyUser-Ip",
    b"Via",
    b"X-Source-IP",
    b"X-Peer-Addr",
    b"Akamai-Client-Ip",
]


def test_client_statements_about_its_address_never_leave(gateway, token, upstream) -> None:
    extra = b"".join(name + b": 6.6.6.6\r\n" for name in FORWARDING)
    extra += b"X-Kept: 1\r\nUser-Agent: kubectl/v1.32\r\n"
    assert _status(_exchange(gateway, _get(token, extra=extra))) == 200
    head = upstream.heads[0]
    assert b"6.6.6.6" not in head
    names = _upstream_header_names(head)
    assert b"x-kept" in names and b"user-agent" in names
    assert names.count(b"x-forwarded-for") == 1
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in head


# -- 5. a token in the query never reaches the audit log ----------------------------------


def test_credentials_in_the_query_are_redacted_in_the_audit_log(
    gateway, token, upstream, caplog
) -> None:
    secret = b"SECRET-" + token[-12:]
    targets = [
        b"/clusters/live/api/v1/pods?access_token=" + secret + b"&limit=1",
        b"/clusters/live/api?id_token=" + secret,
        b"/clusters/live/api?labelSelector=a&ACCESS%5FTOKEN=" + secret,
        b"/clusters/nope/api?client_secret=" + secret,
        b"/clusters/live/api?X-Amz-Signature=" + secret + b"&X-Amz-Credential=" + secret,
    ]
    for target in targets:
        _exchange(gateway, _get(token, target=target))
        _exchange(gateway, _get(b"not-a-token", target=target))  # 401s are recorded too
    assert upstream.heads  # the query itself went upstream byte for byte
    assert all(secret in h for h in upstream.heads)
    time.sleep(0.5)  # the audit log is flushed every 0.2 s
    audit = (Path(gateway.config.audit.file)).read_bytes()
    assert audit.count(b"REDACTED") >= 2 * len(targets)
    assert secret not in audit
    assert not [r for r in caplog.records if secret.decode() in r.getMessage()]


def test_a_token_of_the_gateways_issuer_in_the_query_never_leaves(
    gateway, token, issuer, upstream
) -> None:
    """A token of the gateway's own issuer in the query, under any parameter name and
    percent-encoded or not, is refused with 400 before anything leaves: forwarded, it would
    reach the tenant's API server and its audit log, and could be replayed at the gateway.
    A JWT of some other issuer (an application's, behind the API server's service proxy)
    is not the gateway's to judge and goes upstream as it is."""
    other = issuer.sign(issuer.claims(groups=["developers"]))  # any token of this issuer
    encoded = "".join(f"%{b:02X}" for b in other.encode())
    targets = [
        b"/clusters/live/api/v1/pods?access_token=" + other.encode() + b"&limit=1",
        b"/clusters/live/api?limit=5&x=" + other.encode(),
        b"/clusters/live/api?labelSelector=a%3Db&q=" + encoded.encode(),
        b"/clusters/live/api?" + b"%74oken=%65" + other[1:].encode(),
        b"/clusters/live/api/v1/pods?" + other.encode() + b"&limit=1",
        b"/clusters/live/api?auth=Bearer%20" + other.encode(),
    ]
    for target in targets:
        reply = _exchange(gateway, _get(token, target=target))
        assert _status(reply) == 400, target
        assert b"identity provider" in reply  # a Status, or text on a discovery path
    assert upstream.heads == [], "nothing left for the tenant"
    foreign = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJodHRwczovL2FwcC5leGFtcGxlIn0.sig"
    assert (
        _status(_exchange(gateway, _get(token, target=b"/clusters/live/api?t=" + foreign.encode())))
        == 200
    )
    assert len(upstream.heads) == 1 and foreign.encode() in upstream.heads[0]


# -- 6. framing: nothing is forwarded before the whole head is accepted -------------------


@pytest.mark.parametrize(
    ("extra", "version", "status"),
    [
        (b"Transfer-Encoding: identity\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: xchunked\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: gzip, chunked\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: chunked, chunked\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", b"HTTP/1.1", 400),
        (b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", b"HTTP/1.1", 400),
        (b"Transfer-Encoding: chunked\r\n", b"HTTP/1.0", 400),
        (b"Content-Length: 0\r\nContent-Length: 0\r\n", b"HTTP/1.1", 400),
        (b"Content-Length: +0\r\n", b"HTTP/1.1", 400),
        (b"Content-Length: 0x0\r\n", b"HTTP/1.1", 400),
        (b"Content-Length: -1\r\n", b"HTTP/1.1", 400),
        (b"Content-Length: 0, 0\r\n", b"HTTP/1.1", 400),
        (b"Expect: 200-ok\r\n", b"HTTP/1.1", 417),
        # only HTTP/1.x is spoken here (httptools parses these; Go answers them 505)
        (b"", b"HTTP/2.0", 505),
        (b"", b"HTTP/0.9", 505),
        # an upgrade with a body: the body would never reach the tenant, which waits for it
        (b"Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n", b"HTTP/1.1", 400),
        (
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nTransfer-Encoding: chunked\r\n",
            b"HTTP/1.1",
            400,
        ),
    ],
)
def test_ambiguous_framing_is_refused_before_anything_leaves(
    gateway, token, upstream, extra: bytes, version: bytes, status: int
) -> None:
    reply = _exchange(gateway, _get(token, extra=extra, version=version) + b"0\r\n\r\n")
    assert _status(reply) == status and _body(reply)["kind"] == "Status"
    assert upstream.heads == []


def test_a_refused_pipelined_head_is_answered_after_the_ones_before_it(
    gateway, token, upstream
) -> None:
    good = _get(token).replace(b"Connection: close\r\n", b"")
    bad = _get(token, extra=b"Transfer-Encoding: identity\r\n")
    reply = _exchange(gateway, good + good + bad + good)
    statuses = [
        int(part[9:12])
        for part in reply.split(b"HTTP/1.1 ")[1:]
        if part[:1].isdigit()
        for part in [b"HTTP/1.1 " + part]
    ]
    assert statuses == [200, 200, 400]
    assert len(upstream.heads) == 2


def _waits_for_the_whole_body(ended: threading.Event):
    """An upstream handler that, like Go's server, answers a chunked request only once its
    body is complete; `ended` is set when the connection ends with the body incomplete."""

    async def handler(head: bytes, reader, writer) -> bool:
        got = b""
        while b"chunked" in head.lower() and not got.endswith(b"0\r\n\r\n"):
            chunk = await reader.read(65536)
            if not chunk:
                ended.set()
                return False
            got += chunk
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        return True

    return handler


_POST_CHUNKED = (
    b"POST /clusters/live/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: gw.test\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer "
)


@pytest.mark.parametrize("broken", [b"zz\r\n", b"ffffffffffffffffffff1\r\n{}\r\n", b"-1\r\n"])
def test_a_body_whose_framing_breaks_is_refused_and_cancelled_upstream(
    gateway, token, upstream, broken: bytes
) -> None:
    """The request is under way when its chunked body turns out malformed: it can never be
    complete, so the upstream request is cancelled and the client gets a 400 `Status` at
    once (not after the response timeout, with the tenant holding a half-sent request)."""
    ended = threading.Event()
    upstream.handler = _waits_for_the_whole_body(ended)
    with _connect(gateway) as s:
        s.sendall(_POST_CHUNKED + token + b"\r\n\r\n2\r\n{}\r\n")
        deadline = time.monotonic() + 5
        while not upstream.heads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upstream.heads, "the request was not forwarded"
        started = time.monotonic()
        s.sendall(broken)
        reply = _read_all(s, timeout=5)
    assert time.monotonic() - started < 3
    assert _status(reply) == 400 and _body(reply)["kind"] == "Status"
    assert ended.wait(3), "the upstream request was left open"


def test_a_body_past_the_limit_is_refused_and_cancelled_upstream(
    tmp_path, issuer, token, upstream
) -> None:
    """A chunked body that outgrows `max_request_body_bytes` while its request is under
    way: 413 at once, and the tenant's half-sent request is cancelled."""
    ended = threading.Event()
    upstream.handler = _waits_for_the_whole_body(ended)
    config = _config(tmp_path, issuer, upstream, max_request_body_bytes=4096)
    with GatewayThread(tmp_path / "gw", config) as gw, _connect(gw) as s:
        s.sendall(_POST_CHUNKED + token + b"\r\n\r\n800\r\n" + b"x" * 2048 + b"\r\n")
        deadline = time.monotonic() + 5
        while not upstream.heads and time.monotonic() < deadline:
            time.sleep(0.02)
        assert upstream.heads, "the request was not forwarded"
        started = time.monotonic()
        s.sendall(b"1000\r\n" + b"x" * 4096 + b"\r\n")
        reply = _read_all(s, timeout=5)
        assert time.monotonic() - started < 3
    assert _status(reply) == 413 and _body(reply)["kind"] == "Status"
    assert ended.wait(3), "the upstream request was left open"


def test_a_pipelined_request_whose_body_breaks_never_leaves(gateway, token, upstream) -> None:
    ended = threading.Event()
    upstream.handler = _waits_for_the_whole_body(ended)
    good = _POST_CHUNKED + token + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    bad = _POST_CHUNKED + token + b"\r\n\r\n2\r\n{}\r\nzz\r\n"
    started = time.monotonic()
    reply = _exchange(gateway, good + bad)
    assert time.monotonic() - started < 3
    assert reply.startswith(b"HTTP/1.1 201 ") and reply.count(b"HTTP/1.1 400 ") == 1, reply
    assert len(upstream.heads) == 1


@pytest.mark.parametrize(
    ("trailer", "second", "status"),
    [
        # the next request has no credential of its own: 401, not the trailer's
        (
            b"Authorization: Bearer TOKEN",
            b"GET /clusters/live/api HTTP/1.1\r\nHost: gw.test\r\n",
            401,
        ),
        # nor a Host: it addresses no tenant, not the trailer's
        (b"Host: live.k8s.test", b"GET /api HTTP/1.0\r\nAuthorization: Bearer TOKEN\r\n", 404),
    ],
)
def test_trailer_fields_never_become_fields_of_the_next_request(
    gateway, token, upstream, trailer: bytes, second: bytes, status: int
) -> None:
    """Fields after a chunked body are its trailers: dropped, never a field of the next
    head on the connection (behind an ingress that shares one connection among users and
    passes trailers on, one user would write into another's request)."""
    upstream.handler = _waits_for_the_whole_body(threading.Event())
    first = _POST_CHUNKED + token + b"\r\n\r\n2\r\n{}\r\n0\r\n" + trailer + b"\r\n\r\n"
    raw = (first + second + b"Connection: close\r\n\r\n").replace(b"TOKEN", token)
    reply = _exchange(gateway, raw)
    assert reply.startswith(b"HTTP/1.1 201 ")
    answers = reply.split(b"HTTP/1.1 ")
    assert len(answers) == 3 and int(answers[2][:3]) == status, reply
    assert len(upstream.heads) == 1


def test_pipelined_requests_are_bounded(gateway, token, upstream) -> None:
    from gateway.http.connection import MAX_PIPELINED

    good = _get(token).replace(b"Connection: close\r\n", b"")
    reply = _exchange(gateway, good * (MAX_PIPELINED + 5))
    assert reply.count(b"HTTP/1.1 200 ") <= MAX_PIPELINED + 1
    assert reply.count(b"HTTP/1.1 429 ") == 1
    assert len(upstream.heads) <= MAX_PIPELINED + 1


def test_header_fields_are_bounded_in_number(gateway, token, upstream) -> None:
    extra = b"".join(b"X-N%d: 1\r\n" % i for i in range(300))
    assert _status(_exchange(gateway, _get(token, extra=extra))) == 431
    assert upstream.heads == []


# -- 7. Host -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (
            b"GET /clusters/live/api HTTP/1.1\r\nHost: a.test\r\nHost: live.k8s.test\r\n",
            "too many Host",
        ),
        (b"GET /api HTTP/1.1\r\nHost: nope.k8s.test\r\nhost: live.k8s.test\r\n", "too many Host"),
        (b"GET /clusters/live/api HTTP/1.1\r\n", "missing required Host"),
        (b"GET /api HTTP/1.1\r\nHost: live.k8s.test/x\r\n", "malformed Host"),
        (b"GET /api HTTP/1.1\r\nHost: evil@live.k8s.test\r\n", "malformed Host"),
        (b"GET /api HTTP/1.1\r\nHost: live k8s.test\r\n", "malformed Host"),
        (b"GET http://live.k8s.test/api HTTP/1.1\r\nHost: other.k8s.test\r\n", "authority"),
        (b"GET http://other.k8s.test/api HTTP/1.1\r\nHost: live.k8s.test\r\n", "authority"),
        (b"GET http://x@live.k8s.test/api HTTP/1.1\r\nHost: live.k8s.test\r\n", "authority"),
        (b"GET http://live.k8s.test/clusters/live/api HTTP/1.0\r\n", "authority"),
    ],
)
def test_host_confusion_is_400(gateway, token, upstream, raw: bytes, why: str) -> None:
    reply = _exchange(gateway, raw + b"Authorization: Bearer " + token + b"\r\n\r\n")
    assert _status(reply) == 400 and why in _body(reply)["message"]
    assert upstream.heads == []


def test_absolute_form_with_the_host_as_authority_is_served_in_origin_form(
    gateway, token, upstream
) -> None:
    raw = (
        b"GET HTTP://Live.K8s.Test/api/v1/pods?limit=1 HTTP/1.1\r\nHost: live.k8s.test\r\n"
        b"Authorization: Bearer " + token + b"\r\nConnection: close\r\n\r\n"
    )
    assert _status(_exchange(gateway, raw)) == 200
    assert upstream.heads[0].startswith(b"GET /api/v1/pods?limit=1 HTTP/1.1\r\n")


def test_http10_without_host_is_routed_by_path(gateway, token, upstream) -> None:
    raw = b"GET /clusters/live/api HTTP/1.0\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
    assert _status(_exchange(gateway, raw)) == 200


# -- 8. the portal's session cookie never leaves the gateway ------------------------------


def test_the_portal_cookie_is_removed_and_other_cookies_kept(gateway, token, upstream) -> None:
    from gateway.rewrite import private_cookie_names

    pipeline = gateway.gateway
    saved = pipeline.private_cookies
    pipeline.private_cookies = private_cookie_names(["vgate_portal"])
    try:
        cookies = (
            b"Cookie: a=1; vgate_portal=SESSION1; b=2\r\n"
            b"Cookie: VGATE_PORTAL =SESSION2\r\nCookie: __Host-vgate_portal=SESSION3\r\n"
            b"Cookie: c=3;vgate_portal=SESSION4\r\n"
        )
        assert _status(_exchange(gateway, _get(token, extra=cookies))) == 200
    finally:
        pipeline.private_cookies = saved
    head = upstream.heads[0]
    assert b"SESSION" not in head
    assert b"\r\nCookie: a=1; b=2\r\n" in head and b"\r\nCookie: c=3\r\n" in head


# -- enumeration: an anonymous caller learns nothing about which tenants exist ------------


@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer not-a-token\r\n"])
def test_anonymous_answers_are_the_same_for_every_tenant_name(
    gateway, upstream, auth: bytes
) -> None:
    def reply(target: bytes, host: bytes = b"gw.test") -> tuple[int, dict]:
        raw = _exchange(
            gateway,
            b"GET "
            + target
            + b" HTTP/1.1\r\nHost: "
            + host
            + b"\r\n"
            + auth
            + b"Connection: close\r\n\r\n",
        )
        body = _body(raw)
        return _status(raw), {k: v for k, v in body.items() if k != "metadata"}

    known = reply(b"/clusters/live/api")
    assert known[0] == 401
    for target in (
        b"/clusters/nope/api",
        b"/clusters/Bad_Name/api",
        b"/clusters/",
        b"/clusters",
        b"/clusters/" + b"x" * 80 + b"/api",
    ):
        assert reply(target) == known, target
    for host in (b"nope.k8s.test", b"bad_label.k8s.test", b"a.b.k8s.test"):
        assert reply(b"/api", host) == known, host
    assert upstream.heads == []


def test_an_authenticated_caller_learns_that_a_tenant_does_not_exist(gateway, token) -> None:
    reply = _exchange(gateway, _get(token, target=b"/clusters/nope/api"))
    assert _status(reply) == 404 and 'tenant "nope" not found' in _body(reply)["message"]
    assert _status(_exchange(gateway, _get(token, target=b"/clusters/Bad_Name/api"))) == 404


# -- /metrics lists every tenant: only on the metrics listener -----------------------------


def test_metrics_are_served_only_on_their_own_listener(gateway, token) -> None:
    _exchange(gateway, _get(token))
    main = _exchange(
        gateway, b"GET /metrics HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n"
    )
    assert _status(main) == 404 and b"vgate_requests_total" not in main
    port = gateway.running.metrics_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        metrics = _read_all(s)
    assert _status(metrics) == 200 and b'tenant="live"' in metrics
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /clusters/live/api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _status(_read_all(s)) == 404  # the metrics listener routes nothing
    health = _exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(health) == 200  # probes stay on the main port


# -- a name that slipped past every other check still never becomes a header -------------


def test_a_grant_with_an_unsafe_name_is_refused_before_anything_leaves(
    gateway, issuer, upstream
) -> None:
    """The policy engine grants a name no check before the last would let through: the
    impersonation headers are never built. (The grant is put in the engine's memo of
    decisions for the identity the request's token yields, so `decide` answers with it.)"""
    token = issuer.sign(issuer.claims(groups=["developers"], jti="unsafe-grant"))
    authenticator, policy = gateway.gateway.authenticator, gateway.gateway.policy
    gateway.call(authenticator.verify_now, token)
    identity = gateway.call(authenticator.cached, token)
    grant = Grant("live", identity.username + " ", identity.uid, ("vgate:view",), ("view",), ())
    memo = (id(identity), "live", id(None))
    gateway.call(policy._decided.__setitem__, memo, (identity, None, grant))
    assert gateway.call(policy.decide, identity, "live") is grant
    reply = _exchange(gateway, _get(token.encode(), target=b"/clusters/live/api/v1/pods"))
    assert _status(reply) == 403 and "cannot be passed on safely" in _body(reply)["message"]
    assert upstream.heads == []


def test_an_identity_with_an_unsafe_name_is_refused_by_the_policy_step_too(
    gateway, issuer, upstream
) -> None:
    """The policy engine measures the impersonation headers of every grant it makes: an
    unsafe name met there is the same 403 as at the rewrite step (it was a 500), and
    nothing leaves. (The verified token's cached identity is swapped for one whose name no
    check before the last would let through.)"""
    token = issuer.sign(issuer.claims(groups=["developers"], jti="unsafe-identity"))
    authenticator = gateway.gateway.authenticator
    identity = gateway.call(authenticator.verify_now, token)
    unsafe = dataclasses.replace(identity, username=identity.username + "\r\nX-Evil: 1")
    digest = hashlib.sha256(token.encode()).digest()
    gateway.call(authenticator._cache.put, digest, unsafe)
    assert gateway.call(authenticator.cached, token) is unsafe
    reply = _exchange(gateway, _get(token.encode(), target=b"/clusters/live/api/v1/pods"))
    assert _status(reply) == 403 and "cannot be passed on safely" in _body(reply)["message"]
    assert upstream.heads == []


def test_with_a_portal_its_session_cookie_is_private(tmp_path, issuer) -> None:
    """The composition root hands the portal's cookie name to the rewrite step."""
    from gateway.config import load_config
    from gateway.serve import build_pipeline

    (tmp_path / "policies").mkdir()
    (tmp_path / "client-secret").write_text("s3cret\n")
    (tmp_path / "cookie-secret").write_text("c" * 40 + "\n")
    (tmp_path / "vgate.yaml").write_text(
        yaml.safe_dump(
            {
                "oidc": {"issuers": [{"issuer": issuer.issuer, "audiences": ["vgate"]}]},
                "policies": "policies",
                "portal": {
                    "issuer": issuer.issuer,
                    "client_secret_file": "client-secret",
                    "cookie_secret_file": "cookie-secret",
                    "public_url": "https://gw.test",
                },
            }
        )
    )
    pipeline = build_pipeline(load_config(tmp_path / "vgate.yaml"))
    assert {b"vgate_portal", b"__host-vgate_portal"} <= pipeline.private_cookies
    pipeline.recorder.close()
