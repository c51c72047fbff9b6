"""The bench watch upstream's HTTP/2 side (`loadtests.bench.watch_h2`), in process: an `h2`
client connection talks to an `H2Handler` through a recording transport, and the events
come from the stand-in's own `Watchers` (sent one by one, no clock)."""

from __future__ import annotations

import asyncio
import json
import re

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes

from loadtests.bench import watch_h2
from loadtests.bench.watch_upstream import Watchers

WATCH = b"/api/v1/namespaces/default/pods?watch=true&resourceVersion=1000"
SEQ = re.compile(rb'"bench\.vgate\.io/seq":"(\d+)"')


class Transport(asyncio.Transport):
    """What the handler writes, kept for the client."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Pair:
    """An h2 client and an `H2Handler`, with what the client received per stream."""

    def __init__(self, *, window: int | None = None, max_streams: int = 100) -> None:
        self.watchers = Watchers(5.0, 15.0, 2.0)
        self.server = watch_h2.H2Handler(self.watchers, b'{"kind":"PodList"}', max_streams)
        self.transport = Transport()
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.server.connection_made(self.transport)
        self.data: dict[int, bytearray] = {}
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.reset: dict[int, int] = {}
        self.settings: dict[int, int] = {}
        self.pump()

    def pump(self, *, ack: bool = True) -> None:
        """Carry bytes both ways until neither side has more; `ack`: the client reads what
        it receives (hands the window back)."""
        while True:
            to_server = self.client.data_to_send()
            if to_server:
                self.server.data_received(to_server)
            to_client = bytes(self.transport.out)
            self.transport.out.clear()
            if not to_server and not to_client:
                return
            for ev in self.client.receive_data(to_client):
                if isinstance(ev, ResponseReceived):
                    self.status[ev.stream_id] = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, DataReceived):
                    self.data.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    if ack:
                        self.client.acknowledge_received_data(
                            ev.flow_controlled_length, ev.stream_id
                        )
                elif isinstance(ev, StreamEnded):
                    self.ended.add(ev.stream_id)
                elif isinstance(ev, StreamReset):
                    self.reset[ev.stream_id] = ev.error_code
                elif isinstance(ev, RemoteSettingsChanged):
                    self.settings.update({k: v.new_value for k, v in ev.changed_settings.items()})

    def get(self, path: bytes) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":path", path),
                (b":scheme", b"https"),
                (b":authority", b"127.0.0.1"),
            ],
            end_stream=True,
        )
        self.pump()
        return sid

    def send_all(self, times: int = 1, *, ack: bool = True) -> None:
        for _ in range(times):
            for watch in list(self.watchers.streams.values()):
                self.watchers.send(watch)
        self.pump(ack=ack)

    def seqs(self, sid: int) -> list[int]:
        return [int(m.group(1)) for m in SEQ.finditer(self.data.get(sid, b""))]


def test_watches_share_the_connection_and_events_are_numbered() -> None:
    pair = Pair()
    assert pair.settings[SettingCodes.MAX_CONCURRENT_STREAMS] == watch_h2.MAX_STREAMS == 100
    sids = [pair.get(WATCH) for _ in range(3)]
    assert len(pair.watchers.streams) == 3
    pair.send_all(times=4)
    for sid in sids:
        assert pair.status[sid] == 200
        assert pair.seqs(sid) == [1, 2, 3, 4]
        lines = bytes(pair.data[sid]).splitlines()
        assert [json.loads(line)["type"] for line in lines] == ["MODIFIED"] * 4
    assert pair.watchers.sent == 12
    listed = pair.get(b"/api/v1/namespaces/default/pods")
    assert pair.status[listed] == 200 and listed in pair.ended
    assert bytes(pair.data[listed]) == b'{"kind":"PodList"}'


def test_a_closed_send_window_queues_events_in_order() -> None:
    """With a 1,000-byte stream window the client gets what fits; the rest waits on the
    stream and arrives, in order, once the client hands the window back."""
    pair = Pair(window=1000)
    sid = pair.get(WATCH)
    pair.send_all(times=10, ack=False)
    got = pair.seqs(sid)
    assert 0 < len(got) < 10 and len(pair.data[sid]) <= 1000
    assert pair.server.waiting[sid].size > 0
    pair.client.acknowledge_received_data(len(pair.data[sid]), sid)
    for _ in range(20):  # each round: a window's worth, then the client reads it
        pair.pump()
    assert pair.seqs(sid) == list(range(1, 11))
    assert sid not in pair.server.waiting


def test_a_client_that_never_reads_gets_its_stream_reset() -> None:
    pair = Pair(window=1000)
    unread, other = pair.get(WATCH), pair.get(WATCH)
    watch = pair.server.watches[unread]
    queued = 0
    while unread not in pair.reset:
        pair.watchers.send(watch)
        pair.pump(ack=False)
        queued += 1
        assert queued < 10_000, "the queue was never bounded"
    assert pair.reset[unread] == ErrorCodes.CANCEL
    assert queued * 300 > watch_h2.MAX_QUEUED  # an event is about 300 bytes
    assert set(pair.server.watches) == {other}
    assert len(pair.watchers.streams) == 1
    pair.send_all()
    assert pair.seqs(other) == [1]


def test_rst_stream_removes_that_watch_and_connection_loss_all() -> None:
    pair = Pair()
    a, b, c = (pair.get(WATCH) for _ in range(3))
    pair.send_all()
    pair.client.reset_stream(b, ErrorCodes.CANCEL)
    pair.pump()
    assert set(pair.server.watches) == {a, c}
    assert len(pair.watchers.streams) == 2
    pair.send_all()
    assert pair.seqs(a) == pair.seqs(c) == [1, 2] and pair.seqs(b) == [1]
    pair.server.connection_lost(None)
    assert not pair.watchers.streams and not pair.server.watches


def test_a_burst_watch_joins_the_burst_group() -> None:
    pair = Pair()
    pair.get(WATCH + b"&bench-burst=1")
    assert len(pair.watchers.burst) == 1 and not pair.watchers.streams
