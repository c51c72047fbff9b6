"""Passive readers of an exec/attach session tunnelled as the client sent it: they parse
both directions (WebSocket channel messages, or SPDY streams named by `streamtype`) into
channel messages for a `ChannelTap`, and never change a byte. A stream they cannot follow
(a protocol error, a bound) ends the observation, reported once through `broken`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from gateway.streams import spdy, websocket
from gateway.streams.channels import STREAM_TYPES
from gateway.streams.events import ChannelTap


class WebSocketObserver:
    """A v1-v5 `channel.k8s.io` session (`base64.` variants decoded)."""

    def __init__(self, tap: ChannelTap, protocol: str) -> None:
        self.tap = tap
        self.base64 = protocol.startswith("base64.")
        self._client = websocket.Reader(masked=True)
        self._tenant = websocket.Reader(masked=False)
        self._broken = False

    def client(self, data: bytes) -> None:
        if not self._broken:
            self._read(self._client, data, self.tap.from_client)

    def tenant(self, data: bytes) -> None:
        if not self._broken:
            self._read(self._tenant, data, self.tap.from_tenant)

    def _read(
        self, reader: websocket.Reader, data: bytes, emit: Callable[[int, bytes], None]
    ) -> None:
        try:
            for opcode, payload in reader.feed(data):
                if opcode in (websocket.OP_BINARY, websocket.OP_TEXT) and payload:
                    channel, body = self._channel(payload)
                    emit(channel, body)
        except (websocket.ProtocolError, ValueError, binascii.Error) as exc:
            self._broken = True
            self.tap.events.broken(f"WebSocket stream: {exc}")

    def _channel(self, payload: bytes) -> tuple[int, bytes]:
        if not self.base64:
            return payload[0], payload[1:]
        return int(payload[:1]), base64.b64decode(payload[1:])


class SpdyObserver:
    """A SPDY/3.1 remote-command session: the client's streams, named by `streamtype`."""

    def __init__(self, tap: ChannelTap) -> None:
        self.tap = tap
        self._client = spdy.Reader()
        self._tenant = spdy.Reader()
        self._client_headers = spdy.HeaderReader()
        self._tenant_headers = spdy.HeaderReader()
        self._channels: dict[int, int] = {}  # stream id → channel
        self._broken = False

    def client(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            for frame in self._client.feed(data):
                if isinstance(frame, spdy.Data):
                    channel = self._channels.get(frame.stream_id)
                    if channel is not None and frame.payload:
                        self.tap.from_client(channel, frame.payload)
                elif frame.type in (spdy.SYN_STREAM, spdy.HEADERS):
                    headers = self._client_headers.read(spdy.header_block(frame))
                    kind = (headers.get("streamtype") or [""])[0]
                    if frame.type == spdy.SYN_STREAM and kind in STREAM_TYPES:
                        self._channels[spdy.stream_id_of(frame.body)] = STREAM_TYPES[kind]
                elif frame.type == spdy.SYN_REPLY:
                    self._client_headers.read(spdy.header_block(frame))
        except spdy.ProtocolError as exc:
            self._fail(exc)

    def tenant(self, data: bytes) -> None:
        if self._broken:
            return
        try:
            for frame in self._tenant.feed(data):
                if isinstance(frame, spdy.Data):
                    channel = self._channels.get(frame.stream_id)
                    if channel is not None and frame.payload:
                        self.tap.from_tenant(channel, frame.payload)
                elif frame.type in (spdy.SYN_STREAM, spdy.SYN_REPLY, spdy.HEADERS):
                    self._tenant_headers.read(spdy.header_block(frame))
        except spdy.ProtocolError as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self._broken = True
        self.tap.events.broken(f"SPDY stream: {exc}")
