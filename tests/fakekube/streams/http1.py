"""The two HTTP/1.1 answers an upgrade request can get: 101, or a Status refusal."""

from __future__ import annotations

from email.utils import formatdate

from .bytesource import ByteSink, drain, send
from .status import encode, failure

_REASONS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found"}


async def write_switch(sink: ByteSink, headers: list[tuple[str, str]]) -> None:
    """`101 Switching Protocols` with the given headers."""
    lines = ["HTTP/1.1 101 Switching Protocols", *(f"{k}: {v}" for k, v in headers)]
    send(sink, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await drain(sink)


async def write_refusal(sink: ByteSink, code: int, reason: str, message: str) -> None:
    """A normal response carrying a Kubernetes `Status` body; the connection is then closed."""
    body = encode(failure(code, reason, message))
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
        f"Cache-Control: no-cache, private\r\n"
        f"Content-Type: application/json\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    )
    send(sink, head.encode("latin-1") + body)
    await drain(sink)


async def write_bare_refusal(sink: ByteSink, code: int) -> None:
    """A status line and nothing else: what golang.org/x/net/websocket (the kubelet's
    WebSocket streams before 1.30) answers a handshake whose sub-protocols it refuses."""
    send(sink, f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n\r\n".encode("latin-1"))
    await drain(sink)
