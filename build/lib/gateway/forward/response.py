"""Turn an upstream response head into the head the client receives."""

from __future__ import annotations

from gateway.status import PHRASES

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade", b"proxy-authenticate"}
)


def client_head(
    status: int,
    headers: list[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    method: bytes,
    http11: bool,
    keep_alive: bool,
) -> tuple[bytes, bool, bool]:
    """Return (head, chunked, keep_alive) for relaying `headers` to the client.

    Repeated headers (`Warning`, `Set-Cookie`) stay repeated and in order; content
    headers are untouched. Bodies without a length are re-framed as chunked.
    """
    out = [b"HTTP/1.1 %d %b\r\n" % (status, PHRASES.get(status, "Unknown").encode())]
    has_length = False
    has_audit = False
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP_BY_HOP:
            continue
        if lower == b"content-length":
            has_length = True
        elif lower == b"audit-id":
            has_audit = True
        out += (name, b": ", value, b"\r\n")
    if not has_audit:
        out += (b"Audit-ID: ", request_id, b"\r\n")
    no_body = method == b"HEAD" or status in (204, 304) or status < 200
    chunked = False
    if not no_body and not has_length:
        if http11:
            chunked = True
            out.append(b"Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False
    if not keep_alive:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out), chunked, keep_alive
