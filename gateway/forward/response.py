"""Turn an upstream response head into the head the client receives."""

from __future__ import annotations

from gateway.http.status import status_line

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
    }
)
_COPY, _DROP, _LENGTH, _AUDIT, _COOKIE = range(5)
#: the gateway's own cookies (the portal's session, `gateway.portal.app.SESSION_COOKIE`,
#: with the prefixes browsers reserve), lowercase: the gateway removes them from requests
#: upstream, and a tenant may not set them either (in path form a tenant answers on the
#: portal's own origin, a 101 included)
GATEWAY_COOKIES = frozenset((b"vgate_portal", b"__host-vgate_portal", b"__secure-vgate_portal"))


def sets_gateway_cookie(value: bytes) -> bool:
    """Whether a `Set-Cookie` value sets one of `GATEWAY_COOKIES` (the name before the first
    `=`, trimmed and in any case, as lenient as any browser)."""
    name, eq, _ = value.partition(b"=")
    return bool(eq) and name.strip(b" \t").lower() in GATEWAY_COOKIES


MAX_REMEMBERED_NAMES = 512
# header names exactly as upstreams spell them -> what to do; an API server sends the same
# few names in the same spelling on every response, so `lower()` runs once per spelling.
# A field copied as it is (most) maps to its line's start, ``name: ``, in `_copied`
_actions: dict[bytes, int] = {}
_copied: dict[bytes, bytes] = {}


def _action(name: bytes) -> int:
    lower = name.lower()
    action = (
        _DROP
        if lower in _HOP_BY_HOP
        else _LENGTH
        if lower == b"content-length"
        else _AUDIT
        if lower == b"audit-id"
        else _COOKIE
        if lower == b"set-cookie"
        else _COPY
    )
    if len(_actions) < MAX_REMEMBERED_NAMES:
        _actions[name] = action
        if action == _COPY:
            _copied[name] = name + b": "
    return action


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
    out = [status_line(status)]
    has_length = False
    has_audit = False
    copied = _copied
    for name, value in headers:
        start = copied.get(name)
        if start is not None:  # the common case: a field relayed as it is
            out += (start, value, b"\r\n")
            continue
        action = _actions.get(name)
        if action is None:
            action = _action(name)
        if action == _DROP or (action == _COOKIE and sets_gateway_cookie(value)):
            continue
        if action == _LENGTH:
            has_length = True
        elif action == _AUDIT:
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
