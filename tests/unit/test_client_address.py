"""X-Forwarded-For is believed only through configured trusted proxies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.forward import response
from gateway.http.client_address import ClientAddress
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread
from tests.support.scripted import ScriptedUpstream

INGRESS = ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]


@pytest.mark.parametrize(
    ("peer", "xff", "client", "chain"),
    [
        # no trusted peer: the header is ignored entirely
        ("203.0.113.9", [b"1.2.3.4"], "203.0.113.9", b"203.0.113.9"),
        # the ingress vouches for the client it saw
        ("10.0.0.5", [b"198.51.100.7"], "198.51.100.7", b"198.51.100.7, 10.0.0.5"),
        # a client-written prefix is dropped: only the hop the ingress appended counts
        ("10.0.0.5", [b"6.6.6.6, 198.51.100.7"], "198.51.100.7", b"198.51.100.7, 10.0.0.5"),
        # two trusted hops (CDN → ingress), repeated header lines
        (
            "10.0.0.5",
            [b"198.51.100.7", b"10.1.1.1"],
            "198.51.100.7",
            b"198.51.100.7, 10.1.1.1, 10.0.0.5",
        ),
        # garbage stops the walk at the last believable hop
        ("10.0.0.5", [b"198.51.100.7, not-an-ip"], "10.0.0.5", b"10.0.0.5"),
        ("10.0.0.5", [b"<script>, 10.1.1.1"], "10.1.1.1", b"10.1.1.1, 10.0.0.5"),
        # ports and IPv6 forms
        ("10.0.0.5", [b"198.51.100.7:5555"], "198.51.100.7", b"198.51.100.7, 10.0.0.5"),
        ("fd00::1", [b"[2001:db8::1]:443"], "2001:db8::1", b"2001:db8::1, fd00::1"),
        ("::ffff:10.0.0.5", [b"198.51.100.7"], "198.51.100.7", b"198.51.100.7, ::ffff:10.0.0.5"),
        # a dual-stack proxy's IPv4 client is recorded as that IPv4 address (it was
        # "::ffff:c633:6407"), and a zone, of any length, is dropped
        ("10.0.0.5", [b"::ffff:198.51.100.7"], "198.51.100.7", b"198.51.100.7, 10.0.0.5"),
        ("fd00::1", [b"[::ffff:198.51.100.7]:80"], "198.51.100.7", b"198.51.100.7, fd00::1"),
        ("10.0.0.5", [b"fe80::1%eth0" + b"0" * 3000], "fe80::1", b"fe80::1, 10.0.0.5"),
        ("10.0.0.5", [b"6.6.6.6, fd00::7%eth0"], "6.6.6.6", b"6.6.6.6, fd00::7, 10.0.0.5"),
        # trusted peer without a header
        ("10.0.0.5", [], "10.0.0.5", b"10.0.0.5"),
    ],
)
def test_resolve(peer: str, xff: list[bytes], client: str, chain: bytes) -> None:
    assert ClientAddress(INGRESS).resolve(peer, xff) == (client, chain)


def test_no_trusted_proxies_means_the_peer() -> None:
    assert ClientAddress([]).resolve("10.0.0.5", [b"1.2.3.4"]) == ("10.0.0.5", b"10.0.0.5")


def test_chain_is_bounded() -> None:
    hops = b", ".join(b"10.0.%d.%d" % (i // 256, i % 256) for i in range(1000))
    _, chain = ClientAddress(["10.0.0.0/8"]).resolve("10.0.0.5", [hops])
    assert chain.count(b",") <= 33


# -- through the gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[GatewayThread, ScriptedUpstream, str, Path]]:
    issuer = CraftingIssuer().start()
    upstream = ScriptedUpstream()
    d: Path = tmp_path_factory.mktemp("xff")
    (d / "policies").mkdir()
    (d / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    (d / "token").write_text("upstream-secret\n")
    config = {
        "listen": {"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]},
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "policies": str(d / "policies"),
        "audit": {"file": str(d / "audit.log")},
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(d / "token"),
            }
        ],
    }
    with GatewayThread(d, config) as gw:
        yield gw, upstream, issuer.sign(issuer.claims()), d / "audit.log"
    upstream.stop()
    issuer.down()


def test_forwarded_chain_and_audit_source(world) -> None:
    gw, upstream, token, audit = world
    r = httpx.get(
        f"{gw.url}/clusters/live/api",
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": "6.6.6.6, 198.51.100.7"},
    )
    assert r.status_code == 200
    sent = [
        line
        for line in upstream.heads[-1].split(b"\r\n")
        if line.lower().startswith(b"x-forwarded-for")
    ]
    assert sent == [b"X-Forwarded-For: 198.51.100.7, 127.0.0.1"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        if lines:
            break
        time.sleep(0.05)
    assert (lines[-1]["source"], lines[-1]["via"]) == ("198.51.100.7", "127.0.0.1")


def test_a_tenant_cannot_set_the_portals_session_cookie(world) -> None:
    """The gateway removes its portal's session cookie from requests upstream; a tenant may
    not set it either (in path form the tenant answers on the portal's own origin). Its
    Set-Cookie is dropped from a response and from a 101, in any case and with the
    prefixes browsers reserve; the tenant's other cookies pass."""
    from gateway.portal.app import SESSION_COOKIE

    gw, upstream, token, _ = world
    planted = (
        b"Set-Cookie: vgate_portal=planted; Path=/; SameSite=None; Secure\r\n"
        b"Set-Cookie:  VGATE_PORTAL =planted\r\n"
        b"Set-Cookie: __Host-vgate_portal=planted; Path=/; Secure\r\n"
        b"Set-Cookie: other=kept; Path=/\r\n"
        b"Set-Cookie: vgate_portal_not=kept\r\n"
    )

    async def answer(head: bytes, reader, writer) -> bool:
        if b"upgrade: websocket" in head.lower():
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n" + planted + b"\r\n"
            )
            await writer.drain()
            return False
        writer.write(b"HTTP/1.1 200 OK\r\n" + planted + b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        return True

    upstream.handler = answer
    try:
        r = httpx.get(
            f"{gw.url}/clusters/live/api", timeout=10, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.headers.get_list("set-cookie") == ["other=kept; Path=/", "vgate_portal_not=kept"]
        host, port = gw.url.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(
                b"GET /clusters/live/api/v1/namespaces/x/pods/p/exec?command=sh&stdout=1 "
                b"HTTP/1.1\r\nHost: %b\r\nAuthorization: Bearer %b\r\nConnection: Upgrade\r\n"
                b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n"
                % (host.encode(), token.encode())
            )
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
    finally:
        upstream.handler = upstream.default
    assert head.startswith(b"HTTP/1.1 101"), head
    cookies = [line for line in head.split(b"\r\n") if line.lower().startswith(b"set-cookie")]
    assert cookies == [b"Set-Cookie: other=kept; Path=/", b"Set-Cookie: vgate_portal_not=kept"]
    assert SESSION_COOKIE.encode() in response.GATEWAY_COOKIES  # one name, two modules
