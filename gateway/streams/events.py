"""What a terminal session yields to whoever records it, and the tap that produces it from
channel messages (the same for every transport: observers and bridges feed it)."""

from __future__ import annotations

from typing import Protocol

from gateway.streams.channels import ERROR, RESIZE, STDERR, STDIN, STDOUT, ResizeReader


class TerminalEvents(Protocol):
    """Receives one exec/attach session's traffic as it passes, on the event loop. Every
    method must return at once (no I/O, no waiting)."""

    def output(self, data: bytes) -> None:
        """stdout or stderr, as the client received it."""

    def input(self, data: bytes) -> None:
        """stdin, as the client sent it."""

    def resize(self, width: int, height: int) -> None:
        """The client's terminal changed size."""

    def status(self, data: bytes) -> None:
        """Bytes of the error channel (the `Status` telling how the command ended)."""

    def broken(self, why: str) -> None:
        """The session's stream could not be followed any more (a protocol error)."""


class SessionRecord(TerminalEvents, Protocol):
    """A recording of one session, as the request path sees it."""

    session_id: str

    def started(self, transport: str, protocol: str) -> None:
        """Both sides switched; the tenant speaks `protocol` over `transport`."""

    def finish(self) -> None:
        """The exchange ended (whatever the reason): write the end, close the recording."""


class ChannelTap:
    """Channel messages of a remote-command session → `TerminalEvents`."""

    __slots__ = ("events", "_resize")

    def __init__(self, events: TerminalEvents) -> None:
        self.events = events
        self._resize = ResizeReader()

    def from_client(self, channel: int, data: bytes) -> None:
        if channel == STDIN:
            if data:
                self.events.input(data)
        elif channel == RESIZE:
            for width, height in self._resize.feed(data):
                self.events.resize(width, height)

    def from_tenant(self, channel: int, data: bytes) -> None:
        if channel in (STDOUT, STDERR):
            if data:
                self.events.output(data)
        elif channel == ERROR:
            self.events.status(data)
