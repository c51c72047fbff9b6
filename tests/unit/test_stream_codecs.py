"""The gateway's stream codecs (`gateway.streams`) against independent implementations: the
`websockets` library for RFC 6455 frames, the kubelet stand-in's own SPDY/3.1 codec and
dictionary (`tests/fakekube/streams`), plus the Kubernetes channel rules and the bridges
driven frame by frame."""

from __future__ import annotations

import json
import struct
import zlib

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.http.headers import RequestHeaders
from gateway.streams import channels, spdy, websocket
from gateway.streams.bridge import portforward, remotecommand
from gateway.streams.capabilities import TenantProtocols
from gateway.streams.events import ChannelTap
from gateway.streams.observe import SpdyObserver, WebSocketObserver
from gateway.streams.relay import Ends
from gateway.streams.session import StreamSession, UnusableSwitch
from gateway.streams.upgrade import SPDY, WEBSOCKET, StreamRequest
from tests.fakekube.streams import spdy_frames as fake_spdy
from tests.fakekube.streams.spdy_dictionary import DICTIONARY as FAKE_DICTIONARY

# --- WebSocket ---------------------------------------------------------------------------------


def parse_with_websockets(data: bytes, *, mask: bool) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=mask)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:
            raise AssertionError("incomplete frame")
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("masked", [True, False])
def test_websocket_frames_agree_with_the_websockets_library(size: int, masked: bool) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    ours = websocket.encode(websocket.OP_BINARY, payload, masked=masked)
    (theirs,) = parse_with_websockets(ours, mask=masked)
    assert (theirs.opcode, theirs.data, theirs.fin) == (Opcode.BINARY, payload, True)
    reader = websocket.Reader(masked=masked)
    wire = Frame(Opcode.BINARY, payload).serialize(mask=masked)
    got = []
    for i in range(0, len(wire), 7777):  # in pieces, as reads deliver them
        got += reader.feed(wire[i : i + 7777])
    assert got == [(websocket.OP_BINARY, payload)]


def test_websocket_fragments_join_and_controls_pass_between() -> None:
    wire = b"".join(
        [
            Frame(Opcode.TEXT, b"\x01hel", fin=False).serialize(mask=True),
            Frame(Opcode.PING, b"are you there").serialize(mask=True),
            Frame(Opcode.CONT, b"lo", fin=False).serialize(mask=True),
            Frame(Opcode.CONT, b"!", fin=True).serialize(mask=True),
            Frame(Opcode.CLOSE, struct.pack(">H", 1000) + b"bye").serialize(mask=True),
        ]
    )
    reader = websocket.Reader(masked=True)
    messages = [m for i in range(len(wire)) for m in reader.feed(wire[i : i + 1])]  # byte by byte
    assert messages == [
        (websocket.OP_PING, b"are you there"),
        (websocket.OP_TEXT, b"\x01hello!"),
        (websocket.OP_CLOSE, b"\x03\xe8bye"),
    ]
    assert websocket.close_code(messages[-1].payload) == 1000


@pytest.mark.parametrize(
    "wire",
    [
        Frame(Opcode.BINARY, b"x").serialize(mask=False),  # a client frame must be masked
        Frame(Opcode.CONT, b"x").serialize(mask=True),  # nothing to continue
        websocket.encode(websocket.OP_PING, b"x" * 126, masked=True),  # control frames are short
        bytes([0x83, 0x80, 0, 0, 0, 0]),  # a reserved opcode
        bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + b"mask",  # bigger than the bound
    ],
)
def test_websocket_violations_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(websocket.ProtocolError):
        websocket.Reader(masked=True, max_message=1 << 20).feed(wire)


def test_websocket_accept_key_is_rfc_6455s_example() -> None:
    assert websocket.accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# --- SPDY/3.1 ------------------------------------------------------------------------------------


def test_spdy_dictionary_is_the_drafts_1423_bytes() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY == FAKE_DICTIONARY  # built from words here, written out there


def test_spdy_header_blocks_share_one_zlib_stream_each_way() -> None:
    ours, theirs = spdy.HeaderWriter(), fake_spdy.HeaderDecompressor()
    for kind in ("error", "stdin", "stdout", "stderr", "resize"):
        assert theirs.decompress(ours.block({"streamType": kind})) == {"streamtype": [kind]}
    fake, reader = fake_spdy.HeaderCompressor(), spdy.HeaderReader()
    for port in ("8080", "9090"):
        block = fake.compress({"streamtype": ["data"], "port": [port], "requestid": ["0"]})
        assert reader.read(block) == {"streamtype": ["data"], "port": [port], "requestid": ["0"]}
    # a block read out of turn breaks the shared stream: the next one cannot be read
    lost = fake_spdy.HeaderCompressor()
    lost.compress({"streamtype": ["error"]})
    with pytest.raises(spdy.ProtocolError):
        spdy.HeaderReader().read(lost.compress({"streamtype": ["stdout"]}))


def test_spdy_header_block_bomb_is_bounded() -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    raw = struct.pack(">I", 1) + struct.pack(">I", 1) + b"a" + struct.pack(">I", 1 << 20)
    bomb = z.compress(raw + b"\0" * (1 << 20)) + z.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 5000
    with pytest.raises(spdy.ProtocolError, match="over 65536"):
        spdy.HeaderReader().read(bomb)


def test_spdy_frames_match_the_stand_ins_layout() -> None:
    writer = spdy.HeaderWriter()
    wire = (
        spdy.syn_stream(3, writer.block({"streamtype": "stdin"}))
        + spdy.data(3, b"typed", fin=True)
        + spdy.ping(7)
        + spdy.goaway(3)
    )
    reader = spdy.Reader()
    frames = [f for i in range(0, len(wire), 5) for f in reader.feed(wire[i : i + 5])]
    syn, data, ping, goaway = frames
    assert isinstance(syn, spdy.Control) and syn.type == spdy.SYN_STREAM
    parsed = fake_spdy.parse_syn_stream(syn.body)
    assert parsed.stream_id == 3
    assert fake_spdy.HeaderDecompressor().decompress(parsed.block) == {"streamtype": ["stdin"]}
    assert data == spdy.Data(3, spdy.FLAG_FIN, b"typed") and data.fin
    assert (ping.type, ping.body) == (spdy.PING, struct.pack(">I", 7))
    assert goaway.type == spdy.GOAWAY and spdy.stream_id_of(goaway.body) == 3
    assert fake_spdy.data(5, b"out", fin=True) == spdy.data(5, b"out", fin=True)
    assert fake_spdy.syn_reply(5, b"blk") == spdy.syn_reply(5, b"blk")


def test_spdy_violations_are_protocol_errors() -> None:
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.Reader().feed(struct.pack(">HHI", 0x8002, spdy.PING, 4) + b"\0\0\0\1")
    with pytest.raises(spdy.ProtocolError, match="limit"):
        spdy.Reader(max_frame=1024).feed(struct.pack(">II", 1, 4096))


# --- the Kubernetes channel rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b'{"metadata":{},"status":"Success"}', 0),
        (
            json.dumps(
                {
                    "status": "Failure",
                    "reason": "NonZeroExitCode",
                    "message": "exit 3",
                    "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
                }
            ).encode(),
            3,
        ),
        (b'{"status":"Failure","reason":"InternalError","message":"container gone"}', None),
        (b"plain text from a v1 server", None),
        (b"", None),
    ],
)
def test_exit_status_from_the_error_channel(payload: bytes, code: int | None) -> None:
    assert channels.exit_status(payload).code == code


def test_resize_objects_split_and_joined() -> None:
    reader = channels.ResizeReader()
    assert reader.feed(b'{"Width":80,') == []
    assert reader.feed(b'"Height":24}{"Width":100,"Height":30}') == [(80, 24), (100, 30)]
    assert reader.feed(b'{"Width":0,"Height":5}') == []  # nonsense sizes are left out


# --- requests, heads, discovery ----------------------------------------------------------------


def request(
    upgrade: str, query: str = "command=sh&stdin=true&stdout=true&tty=true", kind: str = "exec"
) -> StreamRequest:
    fields = [(b"Upgrade", upgrade.encode()), (b"Connection", b"Upgrade")]
    if upgrade == "websocket":
        fields += [
            (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io, v4.channel.k8s.io"),
        ]
    else:
        fields += [
            (b"X-Stream-Protocol-Version", p) for p in (b"v5.channel.k8s.io", b"v4.channel.k8s.io")
        ]
    found = StreamRequest.of(
        f"/api/v1/namespaces/ns/pods/web-0/{kind}?{query}".encode(), RequestHeaders.of(fields)
    )
    assert found is not None
    return found


def test_stream_request_reads_the_query_and_offers() -> None:
    r = request(
        "websocket",
        "command=sh&command=-c&command=echo%20hi&container=app&tty=1&stdin=true&stdout=true",
    )
    assert (r.kind, r.namespace, r.pod, r.container) == ("exec", "ns", "web-0", "app")
    assert r.command == ("sh", "-c", "echo hi") and r.tty and r.stdin and not r.stderr
    assert r.client == WEBSOCKET and r.client_protocol() == channels.V5
    assert request("SPDY/3.1").client_protocol() == channels.V4
    assert StreamRequest.of(b"/api/v1/namespaces/ns/pods/web-0/log", RequestHeaders()) is None


NATIVE = (
    b"GET /api/v1/namespaces/ns/pods/web-0/exec?command=sh HTTP/1.1\r\nHost: t\r\n"
    b"Sec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13\r\nUser-Agent: kubectl\r\n"
    b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\nAuthorization: Bearer gw\r\n"
    b"Impersonate-User: alice\r\nAudit-ID: id-1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n"
)


def test_a_bridged_head_keeps_identity_and_swaps_the_upgrade() -> None:
    head = request("websocket").tenant_head(NATIVE, SPDY, b"")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/v1/namespaces/ns/pods/web-0/exec?command=sh HTTP/1.1"
    for kept in (
        b"Host: t",
        b"User-Agent: kubectl",
        b"Authorization: Bearer gw",
        b"Impersonate-User: alice",
        b"Audit-ID: id-1",
    ):
        assert kept in lines
    assert not [line for line in lines if line.lower().startswith(b"sec-websocket")]
    assert b"Upgrade: SPDY/3.1" in lines
    assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in lines
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    back = request("SPDY/3.1").tenant_head(head, WEBSOCKET, b"KEY")
    assert back.startswith(b"GET ") and b"Sec-WebSocket-Key: KEY\r\n" in back
    # only v5: API servers that take it authorize a WebSocket exec as `create`, like SPDY
    assert b"Sec-WebSocket-Protocol: v5.channel.k8s.io\r\n" in back
    assert b"x-stream-protocol-version" not in back.lower() and b"Content-Length" not in back


JSON = [(b"Content-Type", b"application/json")]


def test_discovery_learns_a_refusal_only_when_the_other_upgrade_worked() -> None:
    protocols = TenantProtocols()
    session = StreamSession(request("websocket"), "t1", protocols=protocols)
    assert session.head(NATIVE) == NATIVE and not session.bridged
    assert session.retry_head(401, []) is None  # the gateway's credential: not retried
    # the API server's own 403 (authorization) is never retried with the other verb
    assert session.retry_head(403, [(b"Content-Type", b"application/json")]) is None
    assert session.retry_head(403, []) is not None and session.bridged  # a handshake's 403
    spdy_ok = [(b"X-Stream-Protocol-Version", b"v4.channel.k8s.io")]
    switch = session.switched(spdy_ok, b"id-1")
    assert switch is not None and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in switch
    assert protocols.first("t1", "remotecommand", WEBSOCKET) == SPDY  # known from now on
    assert protocols.first("t1", "portforward", WEBSOCKET) == WEBSOCKET  # per family
    # both refused: nothing learnt, the second refusal is relayed
    fresh = TenantProtocols()
    both = StreamSession(request("websocket"), "t2", protocols=fresh)
    both.head(NATIVE)
    assert both.retry_head(404, JSON) is not None and both.retry_head(404, JSON) is None
    assert fresh.refuses("t2", "remotecommand") is None
    # a tenant known to refuse WebSocket that takes it again is re-checked on failure
    again = StreamSession(request("websocket"), "t1", protocols=protocols)
    assert again.bridged
    again.head(NATIVE)
    assert again.retry_head(400, JSON) is not None and not again.bridged
    assert again.switched([(b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io")], b"id") is None
    assert protocols.refuses("t1", "remotecommand") == SPDY


def test_a_bridged_switch_must_answer_the_gateways_key() -> None:
    session = StreamSession(request("SPDY/3.1"), "t", protocols=TenantProtocols())
    session.head(NATIVE)
    session.retry_head(400, [])
    with pytest.raises(UnusableSwitch, match="Sec-WebSocket-Accept"):
        session.switched(
            [
                (b"Sec-WebSocket-Accept", b"wrong"),
                (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
            ],
            b"id",
        )


# --- bridges and observers, frame by frame ------------------------------------------------------


class Wire:
    """Both ends of a relay, recorded."""

    def __init__(self) -> None:
        self.client = bytearray()
        self.tenant = bytearray()
        self.ended: list[str] = []
        self.ends = Ends(self.client.extend, self.tenant.extend, self.ended.append)


class Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, object]] = []

    def output(self, data: bytes) -> None:
        self.got.append(("o", data))

    def input(self, data: bytes) -> None:
        self.got.append(("i", data))

    def resize(self, width: int, height: int) -> None:
        self.got.append(("r", (width, height)))

    def status(self, data: bytes) -> None:
        self.got.append(("status", data))

    def broken(self, why: str) -> None:
        self.got.append(("broken", why))


def ws_client(channel: int, body: bytes) -> bytes:
    return websocket.encode(websocket.OP_BINARY, bytes([channel]) + body, masked=True)


def ws_messages(data: bytes, *, masked: bool) -> list[tuple[int, bytes]]:
    return [(m.opcode, m.payload) for m in websocket.Reader(masked=masked).feed(data)]


def test_websocket_client_to_spdy_tenant_exec() -> None:
    wire, events = Wire(), Events()
    bridge = remotecommand.WebSocketClientSpdyTenant(
        wire.ends, request("websocket"), channels.V5, ChannelTap(events)
    )
    bridge.start()
    tenant_frames = spdy.Reader().feed(bytes(wire.tenant))
    reader = fake_spdy.HeaderDecompressor()
    opened = {
        f.body[3]: reader.decompress(fake_spdy.parse_syn_stream(f.body).block)
        for f in tenant_frames
    }
    # a TTY with stdin: error, stdin, stdout, resize (no stderr), as client-go opens them
    assert opened == {
        1: {"streamtype": ["error"]},
        3: {"streamtype": ["stdin"]},
        5: {"streamtype": ["stdout"]},
        7: {"streamtype": ["resize"]},
    }
    wire.tenant.clear()
    bridge.from_client(
        ws_client(4, b'{"Width":90,"Height":20}')
        + ws_client(0, b"ls\r")
        + ws_client(255, b"\x00")
        + websocket.encode(websocket.OP_PING, b"hb", masked=True)
    )
    assert spdy.Reader().feed(bytes(wire.tenant)) == [
        spdy.Data(7, 0, b'{"Width":90,"Height":20}'),
        spdy.Data(3, 0, b"ls\r"),
        spdy.Data(3, spdy.FLAG_FIN, b""),
    ]
    assert ws_messages(bytes(wire.client), masked=False) == [(websocket.OP_PONG, b"hb")]
    wire.client.clear()
    status = b'{"metadata":{},"status":"Success"}'
    fake_out = fake_spdy.HeaderCompressor()
    bridge.from_tenant(
        fake_spdy.syn_reply(1, fake_out.compress({}))
        + fake_spdy.data(5, b"file\r\n")
        + fake_spdy.data(5, b"", fin=True)
        + fake_spdy.data(1, status)
        + fake_spdy.data(1, b"", fin=True)
    )
    messages = ws_messages(bytes(wire.client), masked=False)
    assert messages[:2] == [
        (websocket.OP_BINARY, b"\x01file\r\n"),
        (websocket.OP_BINARY, b"\x03" + status),
    ]
    assert messages[2][0] == websocket.OP_CLOSE and websocket.close_code(messages[2][1]) == 1000
    assert wire.ended == [""]
    assert events.got == [("r", (90, 20)), ("i", b"ls\r"), ("o", b"file\r\n"), ("status", status)]


async def test_spdy_client_to_websocket_tenant_exec_waits_for_late_streams() -> None:
    """A short command can end before the SPDY client opened its streams: the output
    waits for them, and the session ends once they exist."""
    wire = Wire()
    req = request("SPDY/3.1", "command=echo&stdout=true&stderr=true")
    bridge = remotecommand.SpdyClientWebSocketTenant(wire.ends, req, channels.V5, None)
    status = b'{"metadata":{},"status":"Success"}'
    tenant = (
        websocket.encode(websocket.OP_BINARY, b"\x01hi\n", masked=False)
        + websocket.encode(websocket.OP_BINARY, b"\x03" + status, masked=False)
        + websocket.encode(websocket.OP_CLOSE, websocket.close_payload(1000), masked=False)
    )
    bridge.from_tenant(tenant)
    assert wire.ended == [] and bridge.tenant_closed() is True  # the client is still due
    (close,) = ws_messages(bytes(wire.tenant), masked=True)
    assert close[0] == websocket.OP_CLOSE  # the tenant's close was answered
    headers = fake_spdy.HeaderCompressor()
    bridge.from_client(
        b"".join(
            fake_spdy.control(
                fake_spdy.SYN_STREAM,
                struct.pack(">IIBB", sid, 0, 0, 0) + headers.compress({"streamtype": [kind]}),
            )
            for sid, kind in ((1, "error"), (3, "stdout"), (5, "stderr"))
        )
    )
    frames = spdy.Reader().feed(bytes(wire.client))
    replies = [f for f in frames if isinstance(f, spdy.Control)]
    assert [spdy.stream_id_of(r.body) for r in replies] == [1, 3, 5]
    data = [f for f in frames if isinstance(f, spdy.Data)]
    assert data == [
        spdy.Data(3, 0, b"hi\n"),
        spdy.Data(1, 0, status),
        spdy.Data(3, spdy.FLAG_FIN, b""),
        spdy.Data(5, spdy.FLAG_FIN, b""),
        spdy.Data(1, spdy.FLAG_FIN, b""),
    ]
    assert wire.ended == [""]


def test_spdy_client_stdin_end_becomes_v5s_close_message() -> None:
    wire = Wire()
    req = request("SPDY/3.1", "command=cat&stdin=true&stdout=true")
    bridge = remotecommand.SpdyClientWebSocketTenant(wire.ends, req, channels.V5, None)
    headers = fake_spdy.HeaderCompressor()
    bridge.from_client(
        fake_spdy.control(
            fake_spdy.SYN_STREAM,
            struct.pack(">IIBB", 3, 0, 0, 0) + headers.compress({"streamtype": ["stdin"]}),
        )
        + fake_spdy.data(3, b"abc")
        + fake_spdy.data(3, b"", fin=True)
        + fake_spdy.ping(1)
    )
    assert ws_messages(bytes(wire.tenant), masked=True) == [
        (websocket.OP_BINARY, b"\x00abc"),
        (websocket.OP_BINARY, b"\xff\x00"),
    ]
    assert spdy.Reader().feed(bytes(wire.client))[-1] == spdy.Control(spdy.PING, 0, b"\0\0\0\1")


def test_port_forward_rides_tunnelled_and_plain() -> None:
    wire = Wire()
    bridge = portforward.WebSocketClientSpdyTenant(wire.ends)
    spdy_bytes = fake_spdy.ping(1) + fake_spdy.data(3, b"payload")
    bridge.from_client(
        websocket.encode(websocket.OP_BINARY, spdy_bytes[:5], masked=True)
        + websocket.encode(websocket.OP_BINARY, spdy_bytes[5:], masked=True)
    )
    assert bytes(wire.tenant) == spdy_bytes
    bridge.from_tenant(b"reply")
    assert ws_messages(bytes(wire.client), masked=False) == [(websocket.OP_BINARY, b"reply")]
    back = Wire()
    reverse = portforward.SpdyClientWebSocketTenant(back.ends)
    reverse.from_client(spdy_bytes)
    assert ws_messages(bytes(back.tenant), masked=True) == [(websocket.OP_BINARY, spdy_bytes)]
    reverse.from_tenant(
        websocket.encode(websocket.OP_BINARY, b"answer", masked=False)
        + websocket.encode(websocket.OP_CLOSE, b"\x03\xe8", masked=False)
    )
    assert bytes(back.client) == b"answer" and back.ended == [""]


def test_observers_see_both_directions_without_changing_them() -> None:
    events = Events()
    ws = WebSocketObserver(ChannelTap(events), channels.V5)
    ws.client(ws_client(0, b"in"))
    ws.tenant(websocket.encode(websocket.OP_BINARY, b"\x02err", masked=False))
    ws.tenant(websocket.encode(websocket.OP_BINARY, b"\x03{}", masked=False))
    assert events.got == [("i", b"in"), ("o", b"err"), ("status", b"{}")]
    events = Events()
    observer = SpdyObserver(ChannelTap(events))
    client_headers, tenant_headers = fake_spdy.HeaderCompressor(), fake_spdy.HeaderCompressor()
    for sid, kind in ((1, "error"), (3, "stdin"), (5, "stdout")):
        observer.client(
            fake_spdy.control(
                fake_spdy.SYN_STREAM,
                struct.pack(">IIBB", sid, 0, 0, 0)
                + client_headers.compress({"streamtype": [kind]}),
            )
        )
        observer.tenant(fake_spdy.syn_reply(sid, tenant_headers.compress({})))
    observer.client(fake_spdy.data(3, b"typed"))
    observer.tenant(fake_spdy.data(5, b"shown") + fake_spdy.data(1, b"{}"))
    assert events.got == [("i", b"typed"), ("o", b"shown"), ("status", b"{}")]
    observer.tenant(b"\x80\x02" + b"\0" * 30)  # SPDY/2: not followed, reported once
    observer.tenant(fake_spdy.data(5, b"lost"))
    assert events.got[-1][0] == "broken" and len(events.got) == 4
