"""What carries a session's bytes once both sides switched protocols: the interface the
forward step drives, and the relay that passes bytes through while watching them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class Ends:
    """How a relay reaches the two connections; each call returns at once (writes are
    buffered by the transports, whose flow control pauses the other side)."""

    to_client: Callable[[bytes], None]
    to_tenant: Callable[[bytes], None]
    #: end the session: the tenant connection closes after its pending output, then the
    #: client's (at once when the tenant's is already closed); the argument is why, for
    #: the audit log ("" for a normal end)
    end: Callable[[str], None]


class Relay(Protocol):
    """Bytes of one switched session, both ways."""

    def start(self) -> None:
        """Both sides switched: send what must come first (a bridge opens its streams)."""

    def from_client(self, data: bytes) -> None: ...

    def from_tenant(self, data: bytes) -> None: ...

    def tenant_closed(self) -> bool:
        """The tenant's connection is gone: write what the client must still see (a
        close frame, stream ends). False: the client's connection may close now; True:
        the relay still waits for the client and calls `Ends.end` itself (bounded)."""


class Observer(Protocol):
    """Reads a tunnelled session's bytes without changing them."""

    def client(self, data: bytes) -> None: ...

    def tenant(self, data: bytes) -> None: ...


class Observed:
    """Passes bytes through unchanged and lets `observer` read them (after they are on
    their way, so a slow observer never delays them)."""

    __slots__ = ("ends", "observer")

    def __init__(self, ends: Ends, observer: Observer) -> None:
        self.ends = ends
        self.observer = observer

    def start(self) -> None:
        return None

    def from_client(self, data: bytes) -> None:
        self.ends.to_tenant(data)
        self.observer.client(data)

    def from_tenant(self, data: bytes) -> None:
        self.ends.to_client(data)
        self.observer.tenant(data)

    def tenant_closed(self) -> bool:
        return False
