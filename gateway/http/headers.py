"""The client's request header fields, classified once, as the parser delivers them.

Every later step reads fields from here instead of scanning the list again: the server
(``Host``, body framing, ``Expect``, ``Upgrade``), authentication (``Authorization``,
``Sec-WebSocket-Protocol``), the client-address step (``X-Forwarded-For``), the nested
impersonation check (whether any ``Impersonate-*`` came) and the rewrite step, which gets
the fields that may travel upstream already filtered by the rules below (`NEVER_FORWARDED`,
`never_forwarded`) and the client's ``Cookie`` values set aside (it removes the gateway's
own cookies from them).

What a client says about where it is (``X-Real-Ip``, ``Forwarded``, ``X-Forwarded-*``,
``True-Client-Ip``, ``CF-Connecting-IP``, … — the class, not a list of examples, see
`never_forwarded`) never travels: the gateway states the client address itself
(``X-Forwarded-For``, from `gateway.http.client_address`).

Head problems a server must refuse before anything is forwarded (several ``Host`` fields,
a malformed ``Host``, framing the gateway cannot be sure of, an ``Expect`` it cannot meet)
are noted while classifying and reported once by `problem` when the head is complete.
"""

from __future__ import annotations

import re

# never forwarded, whatever their case (each field is classified once against these, as
# it arrives): hop-by-hop fields, framing (set by the gateway),
# credentials, and what the gateway itself asserts
NEVER_FORWARDED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"expect",
        b"content-length",
        b"authorization",
        b"proxy-authorization",
        b"audit-id",
        b"x-forwarded-for",
        # statements about the client's address or the original request, which only the
        # gateway (or a trusted proxy, through X-Forwarded-For) may make
        b"forwarded",
        b"via",
        b"client-ip",
    }
)
NEVER_FORWARDED_PREFIXES = (
    b"impersonate-",
    b"x-remote-",  # identity: the gateway's to assert
    b"x-forwarded",
    b"x-real-",
    b"x-original-",
    b"x-envoy-",
    b"x-client-",
    b"x-cluster-client",
    b"true-client",
    b"cf-connecting",
    b"fastly-client",
    b"x-proxyuser",
)
# …and anything else that names a client or source address, whoever invented it
_ADDRESS_NAME = re.compile(
    rb"client.?(?:ip|addr)|connecting.?ip|real.?ip|remote.?(?:ip|addr)|originating.?ip"
    rb"|source.?(?:ip|addr)|socket.?ip|peer.?(?:ip|addr)"
)

Headers = list[tuple[bytes, bytes]]


def never_forwarded(lower: bytes) -> bool:
    """Whether a field (lowercase name) is dropped on the way upstream: hop-by-hop and
    framing fields, credentials, identity assertions and every statement about the
    client's address."""
    return (
        lower in NEVER_FORWARDED
        or lower.startswith(NEVER_FORWARDED_PREFIXES)
        or _ADDRESS_NAME.search(lower) is not None
    )


# the fields some step reads, and the class of every other field
(
    _FORWARD,
    _DROPPED,
    _IMPERSONATE,
    _HOST,
    _LENGTH,
    _TRANSFER,
    _AUTHORIZATION,
    _EXPECT,
    _UPGRADE,
    _CONNECTION,
    _WS,
    _XFF,
    _COOKIE,
) = range(13)
_READ: dict[bytes, int] = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TRANSFER,
    b"authorization": _AUTHORIZATION,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"connection": _CONNECTION,
    b"sec-websocket-protocol": _WS,  # forwarded by the rewrite step without a bearer token
    b"x-forwarded-for": _XFF,
    b"cookie": _COOKIE,  # forwarded by the rewrite step without the gateway's cookies
}


def _classify(lower: bytes) -> int:
    kind = _READ.get(lower)
    if kind is not None:
        return kind
    if lower.startswith(b"impersonate-"):
        return _IMPERSONATE
    return _DROPPED if never_forwarded(lower) else _FORWARD


# field name as sent → class: clients send the same few names in the same spelling request
# after request, so a field costs one lookup (bounded in count and size: names are the
# client's choice)
MAX_REMEMBERED_NAMES = 2048
MAX_REMEMBERED_BYTES = 128
_kinds: dict[bytes, int] = {}

# `Connection` tokens that need no filtering: fields dropped anyway, options, nothing
_NOT_FIELD_NAMES = NEVER_FORWARDED | {b"close", b""}
# Go's `httpguts.ValidHostHeader`: the bytes a Host value may hold
_HOST_VALUE = re.compile(rb"[0-9A-Za-z!$%&'()*+,\-.:;=\[\]_~]*")
_hosts: dict[bytes, bytes] = {}  # Host value as sent → without whitespace, b"\0": invalid
_INVALID_HOST = b"\0"


def _host(value: bytes) -> bytes:
    """A Host value without surrounding whitespace, or `_INVALID_HOST` when Go would refuse
    it (remembered: clients send the same few values)."""
    host = value.strip(b" \t")
    if _HOST_VALUE.fullmatch(host) is None:
        host = _INVALID_HOST
    if len(value) <= MAX_REMEMBERED_BYTES:
        if len(_hosts) >= MAX_REMEMBERED_NAMES:
            _hosts.clear()
        _hosts[value] = host
    return host


class RequestHeaders:
    """One request's header fields: all of them in arrival order (`fields`), what some
    step needs (first `Authorization`, the `Host`, …), and `forward`: the fields allowed
    upstream, as serialized pieces (``name, b": ", value, b"\\r\\n"``, repeated)."""

    __slots__ = (
        "authorization",
        "chunked",
        "connection_named",
        "content_length",
        "cookies",
        "error",
        "expect",
        "fields",
        "forward",
        "forwarded_for",
        "host",
        "hosts",
        "impersonation",
        "transfer_encoding",
        "upgrade",
        "websocket_protocols",
    )

    def __init__(self) -> None:
        self.fields: Headers = []
        self.forward: list[bytes] = []
        self.host: bytes | None = None  # the Host value, without surrounding whitespace
        self.hosts = 0  # how many Host fields came
        self.content_length: int | None = None  # -1: present but not a number
        self.transfer_encoding: bytes | None = None
        self.chunked = False  # Transfer-Encoding: chunked (and nothing else)
        self.authorization: bytes | None = None
        self.expect = False  # Expect: 100-continue
        self.upgrade: bytes | None = None
        self.connection_named: set[bytes] | None = None  # lowercase names `Connection` lists
        self.websocket_protocols: list[bytes] = []
        self.forwarded_for: list[bytes] = []
        self.cookies: list[bytes] | None = None
        self.impersonation = False  # any Impersonate-* field (e.g. kubectl --as)
        self.error: tuple[int, str] | None = None  # the first problem noted while classifying

    @classmethod
    def of(cls, fields: Headers) -> RequestHeaders:
        """Classify a complete list of fields (the parser adds them one by one instead)."""
        headers = cls()
        for name, value in fields:
            headers.add(name, value)
        return headers

    def add(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        kind = _kinds.get(name)
        if kind is None:
            kind = _classify(name.lower())
            if len(name) <= MAX_REMEMBERED_BYTES:
                if len(_kinds) >= MAX_REMEMBERED_NAMES:
                    _kinds.clear()
                _kinds[name] = kind
        if kind == _FORWARD:
            self.forward += (name, b": ", value, b"\r\n")
        elif kind == _DROPPED:
            pass
        elif kind == _IMPERSONATE:
            self.impersonation = True
        elif kind == _AUTHORIZATION:
            if self.authorization is None:
                self.authorization = value
        elif kind == _HOST:
            self.hosts += 1
            host = _hosts.get(value) or _host(value)
            if host is _INVALID_HOST:
                host = value
                self._note(400, "malformed Host header")
            self.host = host
        elif kind == _COOKIE:
            if self.cookies is None:
                self.cookies = []
            self.cookies.append(value)
        elif kind == _LENGTH:
            if self.content_length is not None:
                self._note(400, "more than one Content-Length header")
            self.content_length = int(value) if value.isdigit() else -1
            if self.content_length < 0:
                self._note(400, "invalid Content-Length")
        elif kind == _TRANSFER:
            if self.transfer_encoding is not None:
                self._note(400, "more than one Transfer-Encoding header")
            self.transfer_encoding = value
            self.chunked = value.strip(b" \t").lower() == b"chunked"
            if not self.chunked:
                self._note(
                    400,
                    f"unsupported Transfer-Encoding {value[:32].decode('latin-1')!r}"
                    " (only chunked is accepted)",
                )
        elif kind == _EXPECT:
            if value.strip(b" \t").lower() == b"100-continue":
                self.expect = True
            else:
                self._note(417, "unsupported Expect (only 100-continue is accepted)")
        elif kind == _UPGRADE:  # several fields read as one list (then refused by the server)
            self.upgrade = value if self.upgrade is None else self.upgrade + b", " + value
        elif kind == _CONNECTION:
            named = {t.strip().lower() for t in value.split(b",")} - _NOT_FIELD_NAMES
            if named:
                self.connection_named = (self.connection_named or set()) | named
        elif kind == _WS:
            self.websocket_protocols.append(value)
        elif kind == _XFF:
            self.forwarded_for.append(value)

    def _note(self, code: int, message: str) -> None:
        if self.error is None:
            self.error = (code, message)

    def problem(self, *, http11: bool) -> tuple[int, str] | None:
        """Why the head must be refused before anything is forwarded (status, message), or
        None. As Go's net/http server (kube-apiserver) decides: HTTP/1.1 needs exactly one
        valid Host; body framing must be unambiguous (one Content-Length of digits, or
        Transfer-Encoding exactly `chunked` on HTTP/1.1, never both)."""
        if self.hosts > 1:
            return 400, "too many Host headers"
        if self.error is not None:
            return self.error
        if http11 and not self.hosts:
            return 400, "missing required Host header"
        if self.transfer_encoding is not None:
            if not http11:
                return 400, "Transfer-Encoding is not allowed in an HTTP/1.0 request"
            if self.content_length is not None:
                return 400, "both Transfer-Encoding and Content-Length"
        return None

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
                out += pieces[i : i + 4]
        return out
