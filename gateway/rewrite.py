"""Step 5 of the request path: the request head that leaves for the tenant's API server.

Removed from the client's request, whatever their case: ``Authorization``,
``Proxy-Authorization``, every ``Impersonate-*`` (``Impersonate-Uid`` included), the
front-proxy ``X-Remote-*`` headers, ``Audit-ID``, hop-by-hop headers, every statement about
the client's address (``X-Real-Ip``, ``Forwarded``, ``X-Forwarded-*``, …: see
`gateway.http.headers`), any header the client's ``Connection`` names, a bearer token
offered as a WebSocket subprotocol, and the gateway's own cookies (the portal's session)
from ``Cookie``. Added: the tenant credential, the impersonation headers of the `Grant`, the
request id as ``Audit-ID`` (the API server takes it as its audit event's id, which joins
its audit log to the gateway's), ``X-Forwarded-For`` and ``Host``. The request id is not
sent again as an impersonated extra: the tenant's API server would authorize it, a
different value on every request, at every request's cost.
A tenant-native token (reviewed by the tenant itself) goes instead of the credential, with
no impersonation at all.

Every name in the impersonation headers passes the name gate (`gateway.names.kube`) once
more as the headers are serialized — once per distinct grant, as the block is cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import quote

from gateway.authn.websocket import without_bearer_protocol
from gateway.identity import Grant
from gateway.names import kube

if TYPE_CHECKING:
    from gateway.http.headers import RequestHeaders

Headers = list[tuple[bytes, bytes]]


def extra_header_name(key: str) -> bytes:
    """`Impersonate-Extra-<key>` with the key lowercased and percent-encoded.

    The API server lowercases the header name and then percent-decodes the key, so every
    byte outside the HTTP token set (like ``/``) must travel encoded.
    """
    return b"Impersonate-Extra-" + quote(key.lower(), safe="-.!#$&'*+^_`|~").encode()


MAX_CACHED_BLOCKS = 4096
_blocks: dict[Grant, bytes] = {}


def impersonation_block(grant: Grant) -> bytes:
    """The `Impersonate-*` header lines for a grant, serialized once per distinct grant (a
    `Grant` hashes once; the policy engine hands out the same object for repeat decisions,
    so a hit is a hash lookup that ends at the identity check)."""
    block = _blocks.get(grant)
    if block is None:
        block = _serialize_block(grant)
        if len(_blocks) >= MAX_CACHED_BLOCKS:
            _blocks.clear()
        _blocks[grant] = block
    return block


def _serialize_block(grant: Grant) -> bytes:
    """The header lines; `kube.UnsafeName` if any name would not reach the API server
    exactly as written (a `system:` user or group is checked where names are made: one
    here came from a nested impersonation the tenant's own RBAC allowed)."""
    check = kube.check
    check(grant.user, "user", allow_reserved=True)
    if grant.uid:
        check(grant.uid, "uid")
    for group in grant.groups:
        check(group, "group", allow_reserved=True)
    for key, values in grant.extra:
        check(key, "extra key")
        for value in values:
            check(value, "extra value")
    lines = [b"Impersonate-User: " + grant.user.encode()]
    if grant.uid:
        lines.append(b"Impersonate-Uid: " + grant.uid.encode())
    lines.extend(b"Impersonate-Group: " + g.encode() for g in grant.groups)
    for key, values in grant.extra:
        name = extra_header_name(key)
        lines.extend(name + b": " + v.encode() for v in values)
    return b"\r\n".join(lines) + b"\r\n"


_credential_blocks: dict[tuple[bytes | None, Grant], bytes] = {}


def credential_block(authorization: bytes | None, grant: Grant) -> bytes:
    """The gateway's `Authorization` line followed by the grant's `Impersonate-*` lines,
    joined once per (credential, grant): both are the same objects request after request (a
    credential's bytes and a `Grant` hash once), so a hit is one lookup. `kube.UnsafeName`
    as `impersonation_block`."""
    key = (authorization, grant)
    block = _credential_blocks.get(key)
    if block is None:
        block = impersonation_block(grant)
        if authorization:
            block = b"Authorization: " + authorization + b"\r\n" + block
        if len(_credential_blocks) >= MAX_CACHED_BLOCKS:
            _credential_blocks.clear()
        _credential_blocks[key] = block
    return block


def impersonation_bytes(grant: Grant) -> int:
    """How many bytes of `Impersonate-*` header lines a request with this grant carries."""
    return len(impersonation_block(grant))


def upstream_head(
    method: bytes,
    target: bytes,
    headers: RequestHeaders,
    *,
    authority: bytes,
    authorization: bytes | None,
    identity_block: bytes,
    request_id: bytes,
    framing: bytes,
    upgrade: bytes | None = None,
    forwarded_for: bytes | None = None,
    private_cookies: frozenset[bytes] = frozenset(),
) -> bytes:
    """Serialize the upstream request head.

    `headers` has already set aside every field the HTTP layer never forwards
    (`gateway.http.headers.NEVER_FORWARDED`); the fields the client's ``Connection`` names
    are left out here. `framing` is the body framing line(s) to send (``Content-Length: n\\r\\n``,
    ``Transfer-Encoding: chunked\\r\\n`` or empty); `upgrade` the client's `Upgrade` value
    for exec/attach/port-forward.
    """
    out = [method, b" ", target, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
    out += headers.forwardable()
    if headers.websocket_protocols and not (
        headers.connection_named and b"sec-websocket-protocol" in headers.connection_named
    ):
        for value in headers.websocket_protocols:
            value = without_bearer_protocol(value)
            if value:
                out += (b"Sec-WebSocket-Protocol: ", value, b"\r\n")
    if headers.cookies and not (headers.connection_named and b"cookie" in headers.connection_named):
        for value in headers.cookies:
            value = without_cookies(value, private_cookies) if private_cookies else value
            if value:
                out += (b"Cookie: ", value, b"\r\n")
    if authorization:
        out += (b"Authorization: ", authorization, b"\r\n")
    if identity_block:
        out.append(identity_block)
    out += (b"Audit-ID: ", request_id, b"\r\n")
    if forwarded_for:
        out += (b"X-Forwarded-For: ", forwarded_for, b"\r\n")
    if upgrade is not None:
        out += (b"Connection: Upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    out += (framing, b"\r\n")
    return b"".join(out)


def private_cookie_names(names: Iterable[str]) -> frozenset[bytes]:
    """The lowercase cookie names to remove from `Cookie` upstream: each name as given and
    with the `__Host-` / `__Secure-` prefixes browsers reserve."""
    out: set[bytes] = set()
    for name in names:
        for prefix in ("", "__host-", "__secure-"):
            out.add((prefix + name.lower()).encode())
    return frozenset(out)


def without_cookies(value: bytes, names: frozenset[bytes]) -> bytes:
    """One `Cookie` header value minus the cookies called `names` (compared without
    surrounding whitespace and case, the most a server could read into a name)."""
    lowered = value.lower()
    if not any(name in lowered for name in names):
        return value
    kept = [
        part.strip()
        for part in value.split(b";")
        if part.partition(b"=")[0].strip(b" \t").lower() not in names
    ]
    return b"; ".join(part for part in kept if part)
