"""The client's request header fields, classified once, as the parser delivers them.

Every later step reads fields from here instead of scanning the list again: the server
(``Host``, body framing, ``Expect``, ``Upgrade``), authentication (``Authorization``,
``Sec-WebSocket-Protocol``), the client-address step (``X-Forwarded-For``), the nested
impersonation check (whether any ``Impersonate-*`` came) and the rewrite step, which gets
the fields that may travel upstream already filtered by the rules below (`NEVER_FORWARDED`).
"""

from __future__ import annotations

# never forwarded, whatever their case (each field is classified once against these, as
# it arrives): hop-by-hop fields, framing (set by the gateway),
# credentials, and what the gateway itself asserts
NEVER_FORWARDED = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"host", b"expect", b"content-length",
        b"authorization", b"proxy-authorization", b"audit-id", b"x-forwarded-for",
    }
)
NEVER_FORWARDED_PREFIXES = (b"impersonate-", b"x-remote-")

Headers = list[tuple[bytes, bytes]]

# fields some step reads (all of them also in NEVER_FORWARDED, except the WebSocket one,
# which is forwarded after the rewrite step removed any bearer token from it)
_HOST, _LENGTH, _TRANSFER, _AUTHORIZATION, _EXPECT, _UPGRADE, _CONNECTION, _WS, _XFF = range(
    1, 10)
_KINDS: dict[bytes, int] = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TRANSFER,
    b"authorization": _AUTHORIZATION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"connection": _CONNECTION,
    b"sec-websocket-protocol": _WS,
    b"x-forwarded-for": _XFF,
}
_DROPPED = 0
_KINDS.update((name, _DROPPED) for name in NEVER_FORWARDED if name not in _KINDS)
_IMPERSONATE = b"impersonate-"
# `Connection` tokens that need no filtering: fields dropped anyway, options, nothing
_NOT_FIELD_NAMES = NEVER_FORWARDED | {b"close", b""}


class RequestHeaders:
    """One request's header fields: all of them in arrival order (`fields`), what some
    step needs (first `Authorization`, last `Host`, …), and `forward`: the fields allowed
    upstream, as serialized pieces (``name, b": ", value, b"\\r\\n"``, repeated)."""

    __slots__ = (
        "authorization", "chunked", "connection_named", "content_length", "expect",
        "fields", "forward", "forwarded_for", "host", "impersonation", "upgrade",
        "websocket_protocols",
    )

    def __init__(self) -> None:
        self.fields: Headers = []
        self.forward: list[bytes] = []
        self.host: bytes | None = None
        self.content_length: int | None = None  # -1: present but not a number
        self.chunked = False
        self.authorization: bytes | None = None
        self.expect = False
        self.upgrade: bytes | None = None
        self.connection_named: set[bytes] | None = None  # lowercase names `Connection` lists
        self.websocket_protocols: list[bytes] = []
        self.forwarded_for: list[bytes] = []
        self.impersonation = False  # any Impersonate-* field (e.g. kubectl --as)

    @classmethod
    def of(cls, fields: Headers) -> RequestHeaders:
        """Classify a complete list of fields (the parser adds them one by one instead)."""
        headers = cls()
        for name, value in fields:
            headers.add(name, value)
        return headers

    def add(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        lower = name.lower()
        kind = _KINDS.get(lower)
        if kind is None:
            if not lower.startswith(NEVER_FORWARDED_PREFIXES):
                self.forward += (name, b": ", value, b"\r\n")
            elif lower.startswith(_IMPERSONATE):
                self.impersonation = True
        elif kind == _DROPPED:
            pass
        elif kind == _HOST:
            self.host = value
        elif kind == _AUTHORIZATION:
            if self.authorization is None:
                self.authorization = value
        elif kind == _LENGTH:
            self.content_length = int(value) if value.isdigit() else -1
        elif kind == _TRANSFER:
            self.chunked = True
        elif kind == _EXPECT:
            self.expect = True
        elif kind == _UPGRADE:
            if self.upgrade is None:
                self.upgrade = value
        elif kind == _CONNECTION:
            named = {t.strip().lower() for t in value.split(b",")} - _NOT_FIELD_NAMES
            if named:
                self.connection_named = (self.connection_named or set()) | named
        elif kind == _WS:
            self.websocket_protocols.append(value)
        elif kind == _XFF:
            self.forwarded_for.append(value)

    def get(self, name: bytes) -> bytes | None:
        """The first value of field `name` (lowercase), or None (a scan: for rare uses)."""
        for n, v in self.fields:
            if n.lower() == name:
                return v
        return None

    def forwardable(self) -> list[bytes]:
        """`forward` minus any field the client's `Connection` header names (hop-by-hop
        by the client's own declaration, RFC 9110 §7.6.1)."""
        named = self.connection_named
        if not named:
            return self.forward
        out: list[bytes] = []
        pieces = self.forward
        for i in range(0, len(pieces), 4):
            if pieces[i].lower() not in named:
                out += pieces[i:i + 4]
        return out
