"""Bearer tokens carried in a WebSocket subprotocol, as kube-apiserver accepts them.

Browsers cannot set `Authorization` on a WebSocket, so Kubernetes clients may offer the
subprotocol ``base64url.bearer.authorization.k8s.io.<base64url(token)>`` instead. The
gateway reads the token from there when there is no `Authorization` header, and never lets
that subprotocol travel upstream (it is a credential).
"""

from __future__ import annotations

import base64
import binascii

from gateway.authn.errors import AuthError

BEARER_PROTOCOL_PREFIX = b"base64url.bearer.authorization.k8s.io."


def _protocols(values: list[bytes]) -> list[bytes]:
    return [p.strip() for value in values for p in value.split(b",") if p.strip()]


def websocket_bearer_token(values: list[bytes], *, max_bytes: int) -> str | None:
    """The token offered in `Sec-WebSocket-Protocol` header values, or None.

    Raises `AuthError` for a malformed, oversized or repeated bearer subprotocol.
    """
    offered = [p for p in _protocols(values) if p.startswith(BEARER_PROTOCOL_PREFIX)]
    if not offered:
        return None
    if len(offered) > 1:
        raise AuthError("malformed", "more than one bearer token subprotocol")
    encoded = offered[0][len(BEARER_PROTOCOL_PREFIX) :]
    if len(encoded) > max_bytes * 4 // 3 + 4:
        raise AuthError("too_large", f"token larger than {max_bytes} bytes")
    try:
        token = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise AuthError("malformed", "bearer token subprotocol is not base64url") from None
    if not token or not token.isprintable() or " " in token:
        raise AuthError("malformed", "bearer token subprotocol holds no token")
    return token


def without_bearer_protocol(value: bytes) -> bytes:
    """`value` (one `Sec-WebSocket-Protocol` header) minus any subprotocol that holds the
    bearer prefix anywhere, in any case: kube-apiserver trims each one with Go's
    `strings.TrimSpace`, which strips Unicode spaces (U+00A0, U+0085, ...) that
    `bytes.strip` keeps, so a prefix test after our strip would let such a token through."""
    if BEARER_PROTOCOL_PREFIX not in value.lower():
        return value
    kept = [p for p in _protocols([value]) if BEARER_PROTOCOL_PREFIX not in p.lower()]
    return b", ".join(kept)
