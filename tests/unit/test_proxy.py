"""The data plane against a scripted upstream: streaming, cancellation, failures, framing.

The upstream here is a fault-injection stand-in (raw asyncio): it records the exact bytes
that left the gateway and answers as each test scripts it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config
from tests.support.scripted import ScriptedUpstream


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, issuer, upstream) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("proxy")
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(1)  # accepts the TCP handshake, never answers
    config = viewer_config(
        d,
        issuer.issuer,
        {
            "live": f"http://127.0.0.1:{upstream.port}",
            "dead": f"http://127.0.0.1:{_dead_port()}",
            "silent": f"http://127.0.0.1:{blackhole.getsockname()[1]}",
        },
        upstream={"response_timeout_seconds": 1.0, "connect_timeout_seconds": 1.0},
        limits={"max_request_head_bytes": 32768},
    )
    with GatewayThread(d, config) as gw:
        yield gw
    blackhole.close()


@pytest.fixture
def client(gateway: GatewayThread, issuer: CraftingIssuer) -> Iterator[httpx.Client]:
    token = issuer.sign(issuer.claims())
    with httpx.Client(
        base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def reset_upstream(upstream: ScriptedUpstream) -> None:
    upstream.handler = upstream.default
    upstream.heads.clear()


def test_path_and_query_forwarded_byte_for_byte(client, upstream) -> None:
    r = client.get("/clusters/live/api/v1/namespaces/a%2Fb/pods?labelSelector=app%3Dx&limit=5")
    assert r.status_code == 200
    first_line = upstream.heads[-1].split(b"\r\n", 1)[0]
    assert first_line == b"GET /api/v1/namespaces/a%2Fb/pods?labelSelector=app%3Dx&limit=5 HTTP/1.1"


def test_client_gets_no_extra_headers_added_upstream(client, upstream) -> None:
    raw = upstream.heads
    client.get(
        "/clusters/live/api",
        headers={"Accept": "application/vnd.kubernetes.protobuf", "X-Custom": "1"},
    )
    names = [line.split(b":", 1)[0].lower() for line in raw[-1].split(b"\r\n")[1:] if line]
    assert b"accept-encoding" in names  # httpx (the client) sent it; it is passed, not added
    assert names.count(b"accept") == 1 and b"x-custom" in names
    assert b"authorization" in names and names.count(b"authorization") == 1


def test_streamed_response_arrives_before_upstream_finishes(client, upstream) -> None:
    release = threading.Event()

    async def slow_watch(head, reader, writer) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        event = b'{"type":"ADDED"}\n'
        writer.write(b"%x\r\n%b\r\n" % (len(event), event))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 5)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    upstream.handler = slow_watch
    with client.stream("GET", "/clusters/live/api/v1/pods?watch=true") as r:
        first = next(r.iter_raw())
        assert first == b'{"type":"ADDED"}\n'
        release.set()


def test_client_disconnect_cancels_upstream_at_once(gateway, issuer, upstream) -> None:
    closed = threading.Event()

    async def endless(head, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"2\r\n{}\r\n")
                await writer.drain()
                if reader.at_eof():
                    break
                try:
                    await asyncio.wait_for(reader.read(1), 0.05)
                    if reader.at_eof():
                        break
                except TimeoutError:
                    pass
        except ConnectionError:
            pass
        closed.set()
        return False

    upstream.handler = endless
    token = issuer.sign(issuer.claims())
    s = socket.create_connection(("127.0.0.1", gateway.port))
    s.sendall(
        b"GET /clusters/live/api/v1/pods?watch=1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    assert b"200 OK" in s.recv(4096)
    s.close()
    assert closed.wait(3), "upstream request was not cancelled after the client left"


def test_unreachable_tenant_is_502_status_without_internal_address(client) -> None:
    r = client.get("/clusters/dead/api/v1/pods")
    assert r.status_code == 502
    body = r.json()
    assert body["kind"] == "Status" and body["code"] == 502
    assert "127.0.0.1" not in r.text and "upstream-secret" not in r.text
    # discovery (kubectl's first request) gets the words as text: client-go shows them
    r = client.get("/clusters/dead/api")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/plain")
    assert r.text == "the API server of tenant dead is unreachable"


def test_silent_tenant_times_out_504_and_does_not_slow_others(client) -> None:
    results: dict[str, float] = {}

    def slow() -> None:
        t = time.monotonic()
        results["code"] = client.get("/clusters/silent/api").status_code
        results["silent"] = time.monotonic() - t

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.1)
    t = time.monotonic()
    with httpx.Client(base_url=str(client.base_url), headers=dict(client.headers)) as other:
        assert other.get("/clusters/live/api").status_code == 200
    fast = time.monotonic() - t
    th.join(10)
    assert results["code"] == 504
    assert fast < 0.5, f"a live tenant took {fast:.2f}s while another hung"


def test_repeated_headers_gzip_and_etag_pass_through(client, upstream) -> None:
    import gzip

    payload = gzip.compress(b'{"kind":"PodList"}' * 50)

    async def rich(head, reader, writer) -> bool:
        if b"if-none-match" in head.lower():
            writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        else:
            writer.write(
                b'HTTP/1.1 200 OK\r\nWarning: 299 - "a"\r\nWarning: 299 - "b"\r\n'
                b'Content-Encoding: gzip\r\nETag: "v1"\r\n'
                b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload)
            )
        await writer.drain()
        return True

    upstream.handler = rich
    r = client.get("/clusters/live/api/v1/pods", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get_list("warning") == ['299 - "a"', '299 - "b"']
    assert r.headers["content-encoding"] == "gzip" and r.content == b'{"kind":"PodList"}' * 50
    r = client.get("/clusters/live/api/v1/pods", headers={"If-None-Match": '"v1"'})
    assert r.status_code == 304 and r.headers["etag"] == '"v1"'


def test_chunked_request_body_is_streamed_upstream(client, upstream) -> None:
    got: dict[str, bytes] = {}

    async def echo(head, reader, writer) -> bool:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
        got["body"] = body
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return True

    upstream.handler = echo

    def parts() -> Iterator[bytes]:
        for i in range(50):
            yield b"part-%d;" % i

    r = client.post("/clusters/live/api/v1/namespaces/default/configmaps", content=parts())
    assert r.status_code == 201
    assert got["body"] == b"".join(b"part-%d;" % i for i in range(50))


def test_oversized_head_is_431(client) -> None:
    r = client.get("/clusters/live/api", headers={"X-Big": "a" * 40000})
    assert r.status_code == 431


def test_missing_token_is_401_with_challenge(gateway) -> None:
    r = httpx.get(f"{gateway.url}/clusters/live/api")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["reason"] == "Unauthorized"


def test_unknown_tenant_is_404_status(client) -> None:
    r = client.get("/clusters/nobody/api")
    assert r.status_code == 404 and r.json()["kind"] == "Status"


def test_health_ready_metrics(gateway, client) -> None:
    assert httpx.get(f"{gateway.url}/healthz").text == "ok"
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    client.get("/clusters/live/api")
    metrics = httpx.get(f"{gateway.metrics_url}/metrics").text
    assert 'vgate_requests_total{code="200",tenant="live"}' in metrics
    assert "vgate_token_cache_total" in metrics


def test_graceful_shutdown_ends_watches_cleanly_and_refuses_new(tmp_path, issuer, upstream) -> None:
    async def watch(head, reader, writer) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # until the gateway goes away
        return False

    upstream.handler = watch
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (tmp_path / "token").write_text("t\n")
    config = {
        "oidc": {"issuers": [{"issuer": issuer.issuer, "audiences": ["vgate"]}]},
        "policies": str(tmp_path / "p"),
        "audit": {"file": str(tmp_path / "audit.log")},
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(tmp_path / "token"),
            }
        ],
    }
    gw = GatewayThread(tmp_path, config).start()
    url = gw.url
    token = issuer.sign(issuer.claims())
    with (
        httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {token}"}) as c,
        c.stream("GET", "/clusters/live/api/v1/pods?watch=true") as r,
    ):
        chunks = r.iter_raw()
        assert next(chunks) == b"hello"
        t = time.monotonic()
        gw.stop(grace=0.5)
        rest = b"".join(chunks)  # a clean end of stream (terminating chunk), no error
        assert rest == b"" and time.monotonic() - t < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=2)


def test_unknown_tenants_create_no_metric_series(client, gateway) -> None:
    for i in range(3):
        r = client.get(f"/clusters/made-up-{i}/api")
        assert r.status_code == 404 and r.json()["reason"] == "NotFound"
    metrics = httpx.get(f"{gateway.metrics_url}/metrics", timeout=10).text
    assert "made-up-" not in metrics
    assert 'tenant="live"' in metrics or "vgate_requests_total" in metrics


def test_an_idp_down_since_start_is_a_503_saying_so_until_its_keys_load(tmp_path, upstream) -> None:
    """The IdP answers no JWKS when the gateway starts: a token of that issuer gets a 503
    `Status` saying the signing keys could not be loaded (it was a 401,
    which tells a kubectl user with a good token to log in again), `/readyz` is 503, the
    metric counts `idp_unavailable`; once the IdP answers, the next request's refetch
    loads the keys and the same token works, with no restart."""
    idp = CraftingIssuer().start()

    def unavailable(handler) -> None:
        handler.send_response(503)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    idp.jwks_fault = unavailable
    config = viewer_config(tmp_path, idp.issuer, {"live": f"http://127.0.0.1:{upstream.port}"})
    config["oidc"]["jwks_refresh_min_interval_seconds"] = 0.3
    try:
        with GatewayThread(tmp_path, config) as gw:
            token = idp.sign(idp.claims())
            with httpx.Client(
                base_url=gw.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            ) as c:
                r = c.get("/clusters/live/api/v1/pods")
                assert r.status_code == 503, r.text
                assert "Retry-After" not in r.headers  # kubectl would retry for minutes
                status = r.json()
                assert status["kind"] == "Status" and status["code"] == 503
                assert "signing keys of your identity provider" in status["message"]
                assert httpx.get(f"{gw.metrics_url}/readyz").status_code == 503
                metrics = httpx.get(f"{gw.metrics_url}/metrics").text
                assert 'vgate_auth_failures_total{reason="idp_unavailable"} 1.0' in metrics
                idp.jwks_fault = None  # the IdP is back
                time.sleep(0.35)
                assert c.get("/clusters/live/api/v1/pods").status_code == 200
                assert httpx.get(f"{gw.metrics_url}/readyz").status_code == 200
    finally:
        idp.down()
