"""A WebSocket client that cannot set `Authorization` (a browser) authenticates with the
bearer-token subprotocol, and that subprotocol never reaches the tenant's API server (the
kubelet stand-in: exec needs a kubelet, and it shows the exact upgrade request)."""

from __future__ import annotations

import asyncio
import base64
import ssl

import pytest

from tests.support.kubectl_world import World, standin
from tests.support.tenants import STANDIN

connect = pytest.importorskip("websockets.asyncio.client").connect
InvalidStatus = pytest.importorskip("websockets.exceptions").InvalidStatus

EXEC = "/api/v1/namespaces/default/pods/web-0/exec?command=cat&stdin=true&stdout=true"


def bearer_protocol(token: str) -> str:
    encoded = base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()
    return f"base64url.bearer.authorization.k8s.io.{encoded}"


def _url(world: World) -> str:
    return world.server(STANDIN, "path").replace("https://", "wss://") + EXEC


def _context(world: World) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(world.ca.cert_file))


async def test_exec_with_the_token_in_a_subprotocol(world: World) -> None:
    token = world.token("alice")
    protocols = [bearer_protocol(token), "v5.channel.k8s.io"]
    async with connect(
        _url(world),
        ssl=_context(world),
        subprotocols=protocols,  # type: ignore[arg-type]
        open_timeout=10,
    ) as ws:
        assert ws.subprotocol == "v5.channel.k8s.io"
        await ws.send(b"\x00hello from a browser")
        await ws.send(b"\xff\x00")
        received = b""
        while len(received) < len(b"hello from a browser"):
            message = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(message, bytes) and message[:1] == b"\x01"
            received += message[1:]
        assert received == b"hello from a browser"
    record = [r for r in standin(world).records if b"/exec" in r.target][-1]
    sent = {n.lower(): v for n, v in record.headers}
    assert sent[b"sec-websocket-protocol"] == b"v5.channel.k8s.io"
    assert sent[b"authorization"] == f"Bearer gateway-credential-for-{STANDIN}".encode()
    assert sent[b"impersonate-user"] == b"oidc:alice@example.com"
    for _, value in record.headers:
        assert token.encode() not in value
        assert b"bearer.authorization" not in value


@pytest.mark.parametrize(
    "protocol",
    [
        bearer_protocol("not-a-jwt"),
        "base64url.bearer.authorization.k8s.io.%%%",
    ],
)
async def test_a_bad_subprotocol_token_is_401(world: World, protocol: str) -> None:
    before = len(standin(world).records)
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            _url(world),
            ssl=_context(world),
            subprotocols=[protocol, "v5.channel.k8s.io"],  # type: ignore[list-item]
            open_timeout=10,
        ):
            pass
    assert info.value.response.status_code == 401
    assert len(standin(world).records) == before


async def test_two_bearer_subprotocols_are_refused(world: World) -> None:
    token = world.token("alice")
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            _url(world),
            ssl=_context(world),
            subprotocols=[
                bearer_protocol(token),
                bearer_protocol(token),  # type: ignore[list-item]
                "v5.channel.k8s.io",
            ],
            open_timeout=10,
        ):
            pass
    assert info.value.response.status_code == 401
