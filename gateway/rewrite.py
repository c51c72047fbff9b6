"""Step 5 of the request path: the request head that leaves for the tenant's API server.

Removed from the client's request, whatever their case: ``Authorization``,
``Proxy-Authorization``, every ``Impersonate-*`` (``Impersonate-Uid`` included), the
front-proxy ``X-Remote-*`` headers, ``Audit-ID``, hop-by-hop headers, any header the
client's ``Connection`` names, and a bearer token offered as a WebSocket subprotocol.
Added: the tenant credential, the impersonation headers of the `Grant`, a request id (as
``Audit-ID`` and as an impersonated extra) and ``Host``.
"""

from __future__ import annotations

from urllib.parse import quote

from gateway.authn.websocket import without_bearer_protocol
from gateway.identity import Grant

REQUEST_ID_EXTRA = "vgate.io/request-id"

_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"host", b"expect", b"content-length",
        b"authorization", b"proxy-authorization", b"audit-id", b"x-forwarded-for",
    }
)
_DROPPED_PREFIXES = (b"impersonate-", b"x-remote-")

Headers = list[tuple[bytes, bytes]]


def extra_header_name(key: str) -> bytes:
    """`Impersonate-Extra-<key>` with the key lowercased and percent-encoded.

    The API server lowercases the header name and then percent-decodes the key, so every
    byte outside the HTTP token set (like ``/``) must travel encoded.
    """
    return b"Impersonate-Extra-" + quote(key.lower(), safe="-.!#$&'*+^_`|~").encode()


MAX_CACHED_BLOCKS = 4096
_blocks: dict[int, tuple[Grant, bytes]] = {}


def impersonation_block(grant: Grant) -> bytes:
    """The `Impersonate-*` header lines for a grant. Serialized once per `Grant` object (the
    policy engine hands out the same object for repeat decisions): a lookup by identity,
    without hashing the grant's fields."""
    hit = _blocks.get(id(grant))
    if hit is not None and hit[0] is grant:
        return hit[1]
    block = _serialize_block(grant)
    if len(_blocks) >= MAX_CACHED_BLOCKS:
        _blocks.clear()
    _blocks[id(grant)] = (grant, block)
    return block


def _serialize_block(grant: Grant) -> bytes:
    lines = [b"Impersonate-User: " + grant.user.encode()]
    if grant.uid:
        lines.append(b"Impersonate-Uid: " + grant.uid.encode())
    lines.extend(b"Impersonate-Group: " + g.encode() for g in grant.groups)
    for key, values in grant.extra:
        name = extra_header_name(key)
        lines.extend(name + b": " + v.encode() for v in values)
    return b"\r\n".join(lines) + b"\r\n"


_REQUEST_ID_HEADER = extra_header_name(REQUEST_ID_EXTRA) + b": "


def client_impersonation(headers: Headers) -> Headers:
    """The client's own `Impersonate-*` headers (e.g. from `kubectl --as`)."""
    return [(n, v) for n, v in headers if n[:12].lower() == b"impersonate-"]


def upstream_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    authority: bytes,
    authorization: bytes | None,
    identity_block: bytes,
    request_id: bytes,
    framing: bytes,
    upgrade: bytes | None = None,
    forwarded_for: bytes | None = None,
) -> bytes:
    """Serialize the upstream request head.

    `framing` is the body framing line(s) to send (``Content-Length: n\\r\\n``,
    ``Transfer-Encoding: chunked\\r\\n`` or empty); `upgrade` the client's `Upgrade` value
    for exec/attach/port-forward.
    """
    connection_named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            connection_named.update(t.strip().lower() for t in value.split(b","))
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    for name, value in headers:
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower.startswith(_DROPPED_PREFIXES) or lower in connection_named:
            continue
        if lower == b"sec-websocket-protocol":
            value = without_bearer_protocol(value)
            if not value:
                continue
        out += (name, b": ", value, b"\r\n")
    if authorization:
        out += (b"Authorization: ", authorization, b"\r\n")
    out += (identity_block, _REQUEST_ID_HEADER, request_id, b"\r\nAudit-ID: ", request_id, b"\r\n")
    if forwarded_for:
        out += (b"X-Forwarded-For: ", forwarded_for, b"\r\n")
    if upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    out += (framing, b"\r\n")
    return b"".join(out)
