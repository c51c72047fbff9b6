"""The ASGI bridge on the gateway's own HTTP/1.1 layer: scope, body, framing, errors."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httpx
import pytest

from gateway.http.asgi import AsgiBridge
from gateway.http.connection import ClientConnection


@dataclass
class _Limits:
    max_request_head_bytes: int = 65536
    max_request_header_fields: int = 256
    max_request_body_bytes: int = 1 << 20
    keepalive_timeout_seconds: float = 5.0
    request_head_timeout_seconds: float = 5.0
    first_byte_timeout_seconds: float = 5.0


class _Dispatcher:
    def __init__(self, bridge: AsgiBridge) -> None:
        self.bridge = bridge
        self.done_count = 0

    def dispatch(self, exchange) -> None:
        if not self.bridge.handle(exchange):
            exchange.fail(404, "no mount")

    def done(self, exchange) -> None:
        self.done_count += 1


async def echo_app(scope, receive, send):
    message = await receive()
    body = json.dumps(
        {
            "path": scope["path"],
            "root_path": scope["root_path"],
            "raw_path": scope["raw_path"].decode(),
            "query": scope["query_string"].decode(),
            "method": scope["method"],
            "body": message["body"].decode(),
            "scheme": scope["scheme"],
            "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"x-app", b"echo")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def admin_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"admin:" + scope["path"].encode()})


async def streaming_app(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for i in range(3):
        await send({"type": "http.response.body", "body": f"part{i}\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def crashing_app(scope, receive, send):
    raise RuntimeError("secret internal detail /etc/vgate/key")


@pytest.fixture
async def server():
    bridge = AsgiBridge(max_body_bytes=1024)
    bridge.mount("/", echo_app)
    bridge.mount("/admin/", admin_app)
    bridge.mount("/stream", streaming_app)
    bridge.mount("/crash", crashing_app)
    dispatcher = _Dispatcher(bridge)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: ClientConnection(dispatcher, _Limits(), set()), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    yield bridge, f"http://127.0.0.1:{port}", port
    srv.close()
    await bridge.close()


async def test_scope_and_body(server):
    _, url, _ = server
    async with httpx.AsyncClient() as c:
        r = await c.post(url + "/some/p%41th?x=1&y=%2F", content=b"hello")
    assert r.status_code == 200
    assert r.headers["x-app"] == "echo"
    assert r.headers["content-length"] == str(len(r.content))
    data = r.json()
    assert data["path"] == "/some/pAth"
    assert data["raw_path"] == "/some/p%41th"
    assert data["root_path"] == ""
    assert data["query"] == "x=1&y=%2F"
    assert data["method"] == "POST"
    assert data["body"] == "hello"
    assert data["scheme"] == "http"
    assert ["content-length", "5"] in data["headers"]


async def test_longest_prefix_wins_and_root_path(server):
    bridge, url, _ = server
    async with httpx.AsyncClient() as c:
        r = await c.get(url + "/admin/tenants")
        r2 = await c.get(url + "/administrator")
    assert (r.status_code, r.text) == (201, "admin:/admin/tenants")
    assert r2.json()["path"] == "/administrator"  # not under /admin/
    assert bridge.match("/admin") is not None and bridge.match("/admin")[0] == "/admin"


async def test_keepalive_reuses_connection(server):
    _, url, _ = server
    async with httpx.AsyncClient() as c:
        for _ in range(3):
            r = await c.get(url + "/x")
            assert r.status_code == 200
    # one connection served all three (no Connection: close)
    assert "connection" not in r.headers


async def test_body_over_limit_is_413(server):
    _, url, _ = server
    async with httpx.AsyncClient() as c:
        r = await c.post(url + "/x", content=b"a" * 2048)
    assert r.status_code == 413

    async def chunks():
        for _ in range(4):
            yield b"b" * 400

    async with httpx.AsyncClient() as c:
        r = await c.post(url + "/x", content=chunks())  # chunked: no Content-Length up front
    assert r.status_code == 413


async def test_streaming_body_is_chunked(server):
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, data
        data += chunk
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\npart0\n\r\n6\r\npart1\n\r\n6\r\npart2\n\r\n0\r\n\r\n"


async def test_app_error_is_500_without_internals(server, caplog):
    _, url, _ = server
    async with httpx.AsyncClient() as c:
        r = await c.get(url + "/crash")
    assert r.status_code == 500
    assert "secret" not in r.text and "etc/vgate" not in r.text
    assert "mounted application failed" in caplog.text


async def test_client_disconnect_reaches_the_app():
    seen: list[str] = []
    started = asyncio.Event()

    async def waiting_app(scope, receive, send):
        seen.append((await receive())["type"])
        started.set()
        seen.append((await receive())["type"])

    bridge = AsgiBridge()
    bridge.mount("/", waiting_app)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: ClientConnection(_Dispatcher(bridge), _Limits(), set()), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(started.wait(), 5)
    writer.close()
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.02)
    assert seen == ["http.request", "http.disconnect"]
    srv.close()
    await bridge.close()


async def test_no_mount_falls_through():
    bridge = AsgiBridge()
    bridge.mount("/admin", admin_app)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: ClientConnection(_Dispatcher(bridge), _Limits(), set()), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{port}/elsewhere")
    assert r.status_code == 404 and r.json()["kind"] == "Status"
    srv.close()


async def test_head_has_no_body(server):
    _, _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /admin/y HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"admin:/admin/y" not in data:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, data
        data += chunk
    writer.close()
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 201")  # nothing between the HEAD answer and the next


async def test_slow_client_slows_a_streaming_app():
    sent: list[int] = []
    chunk = b"z" * (1 << 20)

    async def big_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(32):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(i)
        await send({"type": "http.response.body", "body": b""})

    bridge = AsgiBridge()
    bridge.mount("/", big_stream)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: ClientConnection(_Dispatcher(bridge), _Limits(), set()), "127.0.0.1", 0
    )
    port = srv.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.5)  # not reading: the app must stall well before 32 MiB
    stalled_at = len(sent)
    assert stalled_at < 24, stalled_at
    total = 0
    while True:
        data = await asyncio.wait_for(reader.read(1 << 20), 5)
        total += len(data)
        if data.endswith(b"0\r\n\r\n") or not data:
            break
    assert len(sent) == 32 and total > 32 * len(chunk)
    writer.close()
    srv.close()
    await bridge.close()
