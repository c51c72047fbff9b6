"""Connections that have not authenticated yet, counted per client address and capped.

A connection counts from the moment it opens until a request on it carries a valid
credential (the pipeline says so through `ClientConnection.authenticated`), or until it
closes. Over the cap, a new connection from that address is refused at once: one canned
`429` write and a close, nothing parsed. Peers for which the count would be meaningless are
exempt: the trusted proxies (an ingress carries many clients on its own address, and
buffers each request head before it connects). The count is per worker process.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.http.status import status_body, status_line


class Admission:
    """The cap of unauthenticated connections per peer address (`max_per_address`; 0:
    no cap)."""

    def __init__(
        self, max_per_address: int, exempt: Callable[[str], bool] = lambda _peer: False
    ) -> None:
        self.max_per_address = max_per_address
        self.exempt = exempt
        self.open: dict[str, int] = {}  # peer address → unauthenticated connections
        self.refused = 0
        body = status_body(429, "too many unauthenticated connections from this address")
        self.refusal = (
            status_line(429) + b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%b"
            % (len(body), body)
        )

    def counts(self, peer: str) -> bool:
        """Whether connections from `peer` are counted at all."""
        return self.max_per_address > 0 and not self.exempt(peer)

    def add(self, peer: str) -> bool:
        """Count one more connection from `peer`; False (not counted) over the cap."""
        count = self.open.get(peer, 0)
        if count >= self.max_per_address:
            self.refused += 1
            return False
        self.open[peer] = count + 1
        return True

    def remove(self, peer: str) -> None:
        """One connection from `peer` authenticated or closed."""
        count = self.open.get(peer, 0) - 1
        if count > 0:
            self.open[peer] = count
        else:
            self.open.pop(peer, None)
