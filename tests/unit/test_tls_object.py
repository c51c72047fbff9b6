"""`DirectSSLObject`: uvloop's TLS calls reach OpenSSL's wrapper directly, with the same
behaviour as `ssl.SSLObject` (records both ways, want-read, close_notify), on the contexts
the gateway serves and dials with."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import types
from pathlib import Path

import pytest

from gateway.http.serving_certificate import ServingCertificate
from gateway.http.tls_object import DirectSSLObject, direct_records
from tests.support.pki import TestCA


def _pair(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = TestCA(tmp_path)
    leaf = ca.issue("localhost", ["localhost"])
    server = ServingCertificate(leaf.cert_file, leaf.key_file).context
    client = direct_records(ssl.create_default_context(cafile=str(ca.cert_file)))
    return server, client


def _pump(a: ssl.MemoryBIO, b: ssl.MemoryBIO) -> None:
    """Move what one side wrote into the other side's incoming BIO."""
    data = a.read()
    if data:
        b.write(data)


def test_records_both_ways_as_ssl_sslobject_does(tmp_path: Path) -> None:
    server_ctx, client_ctx = _pair(tmp_path)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    assert type(server) is DirectSSLObject and type(client) is DirectSSLObject
    # the three record calls are the C object's own methods: no Python frame in between
    for obj in (server, client):
        for name in ("read", "write", "pending"):
            method = getattr(obj, name)
            assert isinstance(method, types.BuiltinMethodType), (name, method)
            assert method.__self__ is obj._sslobj  # type: ignore[attr-defined]
    for _ in range(10):  # the handshake, pumped by hand
        for obj, out, peer_in in ((client, c_out, s_in), (server, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
            _pump(out, peer_in)
    assert client.version() == "TLSv1.3" and server.selected_alpn_protocol() is None
    assert client.getpeercert()["subject"][0][0][1] == "localhost"
    with pytest.raises(ssl.SSLWantReadError):
        server.read(1024)  # nothing yet: the same exception uvloop waits on
    assert client.write(b"GET / HTTP/1.1\r\n\r\n") == 18
    _pump(c_out, s_in)
    assert server.pending() == 0  # still encrypted in the BIO
    assert server.read(5) == b"GET /"
    assert server.pending() == 13  # the rest of the record, decrypted
    buffer = bytearray(64)
    assert server.read(64, buffer) == 13 and bytes(buffer[:13]) == b" HTTP/1.1\r\n\r\n"
    with pytest.raises(ssl.SSLWantReadError):
        client.unwrap()  # sends close_notify, waits for the peer's
    _pump(c_out, s_in)
    assert server.read(1024) == b""  # close_notify read as the end, as with SSLObject


def test_the_gateways_tls_contexts_make_direct_objects_under_uvloop(tmp_path: Path) -> None:
    """A uvloop TLS server and client on the gateway's contexts exchange data."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop is what the gateway runs on")
    server_ctx, client_ctx = _pair(tmp_path)

    async def main() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.readexactly(5)).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        sslobj = writer.get_extra_info("ssl_object")
        assert type(sslobj) is DirectSSLObject
        writer.write(b"hello")
        answer = await reader.read()
        writer.close()
        server.close()
        return answer

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(main()) == b"HELLO"
    finally:
        loop.close()
