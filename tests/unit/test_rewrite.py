"""Unit tests for step 5 of the request path: the head that leaves for the tenant."""

from __future__ import annotations

import pytest

from gateway.http.headers import RequestHeaders
from gateway.identity import Grant
from gateway.rewrite import extra_header_name, impersonation_block, upstream_head

GRANT = Grant(
    tenant="tenant1",
    user="oidc:alice@example.com",
    uid="u-alice",
    groups=("vgate:cluster-admin", "vgate:view"),
    roles=("cluster-admin", "view"),
    extra=(),  # what the policy engine grants: no extras (they cost the API server per request)
)

CLIENT_HEADERS: list[tuple[bytes, bytes]] = [
    (b"Host", b"tenant1.k8s.example.com"),
    (b"User-Agent", b"kubectl/v1.31.0"),
    (b"Accept", b"application/json;as=Table;v=v1;g=meta.k8s.io"),
    (b"Authorization", b"Bearer client-token"),
    (b"authorization", b"Basic YWRtaW46YWRtaW4="),
    (b"Proxy-Authorization", b"Basic cHJveHk6cHJveHk="),
    (b"Impersonate-User", b"system:admin"),
    (b"impersonate-group", b"system:masters"),
    (b"IMPERSONATE-GROUP", b"system:nodes"),
    (b"iMpErSoNaTe-uid", b"0"),
    (b"Impersonate-Extra-scopes", b"all"),
    (b"Impersonate-Extra-vgate.io%2Fissuer", b"https://evil.example.com"),
    (b"X-Remote-User", b"system:admin"),
    (b"x-remote-group", b"system:masters"),
    (b"X-Remote-Extra-Foo", b"bar"),
    (b"Audit-ID", b"client-chosen-id"),
    (b"Connection", b"keep-alive, X-Secret-Hop"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Content-Length", b"999"),
    (b"Upgrade", b"h2c"),
    (b"Expect", b"100-continue"),
    (b"X-Forwarded-For", b"6.6.6.6"),
    (b"x-secret-hop", b"hop-value"),
    (b"Accept", b"application/json"),
    (b"Accept-Encoding", b"gzip"),
]


def _head(headers=CLIENT_HEADERS, **kw) -> bytes:
    args = dict(
        authority=b"10.0.0.10:443",
        authorization=b"Bearer tenant-credential",
        identity_block=impersonation_block(GRANT),
        request_id=b"req-123",
        framing=b"Content-Length: 5\r\n",
    )
    args.update(kw)
    # the fields classified as the server's parser does, one by one
    return upstream_head(b"GET", b"/api/v1/pods?watch=1", RequestHeaders.of(headers), **args)


def _lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in _lines(head)[1:]:
        name, sep, value = line.partition(b": ")
        assert sep, line
        out.append((name, value))
    return out


def _named(head: bytes, name: bytes) -> list[bytes]:
    return [v for n, v in _fields(head) if n.lower() == name.lower()]


def test_request_line_and_host() -> None:
    head = _head()
    assert _lines(head)[0] == b"GET /api/v1/pods?watch=1 HTTP/1.1"
    assert _named(head, b"host") == [b"10.0.0.10:443"]


def test_exactly_one_authorization_and_it_is_the_tenants() -> None:
    head = _head()
    assert _named(head, b"authorization") == [b"Bearer tenant-credential"]
    assert b"client-token" not in head
    assert b"YWRtaW46YWRtaW4=" not in head
    assert _named(head, b"proxy-authorization") == []
    assert b"cHJveHk6cHJveHk=" not in head


def test_no_authorization_when_tenant_uses_client_certificates() -> None:
    head = _head(authorization=None)
    assert _named(head, b"authorization") == []
    assert b"client-token" not in head


def test_client_impersonation_headers_are_all_gone() -> None:
    head = _head()
    fields = _fields(head)
    ours = impersonation_block(GRANT).rstrip(b"\r\n").split(b"\r\n")
    theirs = [n + b": " + v for n, v in fields if n.lower().startswith(b"impersonate-")]
    assert theirs == ours
    for value in (
        b"system:admin",
        b"system:masters",
        b"system:nodes",
        b"evil.example.com",
        b"Impersonate-Extra-scopes",
    ):
        assert value not in head


def test_impersonation_lines_exactly() -> None:
    head = _head()
    assert [n + b": " + v for n, v in _fields(head) if n.startswith(b"Impersonate-")] == [
        b"Impersonate-User: oidc:alice@example.com",
        b"Impersonate-Uid: u-alice",
        b"Impersonate-Group: vgate:cluster-admin",
        b"Impersonate-Group: vgate:view",
    ]
    # the request id travels once, as the API server's audit id: not as an extra the API
    # server would have to authorize on every request
    assert _named(head, b"audit-id") == [b"req-123"]
    assert b"req-123" not in head.replace(b"Audit-ID: req-123", b"")


def test_extras_of_a_grant_are_serialized() -> None:
    """A grant with extras (nested impersonation: the requested ones and
    `vgate.io/original-user`) sends each value under its percent-encoded key."""
    grant = Grant(
        "t",
        "dave",
        "u-dave",
        ("team-d",),
        ("view",),
        (("scopes", ("a", "b")), ("vgate.io/original-user", ("oidc:alice",))),
    )
    assert impersonation_block(grant) == (
        b"Impersonate-User: dave\r\nImpersonate-Uid: u-dave\r\nImpersonate-Group: team-d\r\n"
        b"Impersonate-Extra-scopes: a\r\nImpersonate-Extra-scopes: b\r\n"
        b"Impersonate-Extra-vgate.io%2Foriginal-user: oidc:alice\r\n"
    )


def test_impersonation_block_without_uid_has_no_uid_line() -> None:
    grant = Grant("t", "oidc:bob", "", ("vgate:view",), ("view",), ())
    assert impersonation_block(grant) == (
        b"Impersonate-User: oidc:bob\r\nImpersonate-Group: vgate:view\r\n"
    )


def test_front_proxy_and_audit_headers_are_replaced() -> None:
    head = _head()
    assert [n for n, _ in _fields(head) if n.lower().startswith(b"x-remote-")] == []
    assert _named(head, b"audit-id") == [b"req-123"]
    assert b"client-chosen-id" not in head


@pytest.mark.parametrize(
    "name",
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"x-secret-hop",
    ],
)
def test_hop_by_hop_and_connection_named_headers_are_gone(name: bytes) -> None:
    assert _named(_head(), name) == []


def test_connection_named_headers_any_case_and_spacing() -> None:
    headers = [
        (b"CONNECTION", b" X-One ,x-TWO,, "),
        (b"x-one", b"1"),
        (b"X-Two", b"2"),
        (b"X-Three", b"3"),
    ]
    head = _head(headers, framing=b"")
    assert [n for n, _ in _fields(head) if n.lower().startswith(b"x-")] == [b"X-Three"]


def test_framing_replaces_client_content_length() -> None:
    head = _head(framing=b"Transfer-Encoding: chunked\r\n")
    assert _named(head, b"content-length") == []
    assert _named(head, b"transfer-encoding") == [b"chunked"]
    assert b"999" not in head


def test_forwarded_for_is_ours_not_the_clients() -> None:
    assert _named(_head(), b"x-forwarded-for") == []
    assert _named(_head(forwarded_for=b"10.1.2.3"), b"x-forwarded-for") == [b"10.1.2.3"]


def test_upgrade_is_set_only_from_the_argument() -> None:
    head = _head(upgrade=b"SPDY/3.1")
    assert _named(head, b"connection") == [b"Upgrade"]
    assert _named(head, b"upgrade") == [b"SPDY/3.1"]


def test_repeated_client_headers_kept_in_order() -> None:
    head = _head()
    assert _named(head, b"accept") == [
        b"application/json;as=Table;v=v1;g=meta.k8s.io",
        b"application/json",
    ]
    kept = [n for n, _ in _fields(head)][1:4]
    assert kept == [b"User-Agent", b"Accept", b"Accept"]  # client order, client case


@pytest.mark.parametrize(
    "name",
    [
        b"Impersonate-User",
        b"impersonate-group",
        b"IMPERSONATE-GROUP",
        b"iMpErSoNaTe-uid",
        b"Impersonate-Extra-scopes",
        b"Impersonate-Extra-a%2Fb",
    ],
)
def test_client_impersonation_detected_in_any_case(name: bytes) -> None:
    assert RequestHeaders.of([(b"Accept", b"*/*"), (name, b"x")]).impersonation
    assert not RequestHeaders.of(
        [(b"Accept", b"*/*"), (b"Impersonate", b"x"), (b"X-Impersonate-User", b"x")]
    ).impersonation


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("vgate.io/issuer", b"Impersonate-Extra-vgate.io%2Fissuer"),
        ("vgate.io/request-id", b"Impersonate-Extra-vgate.io%2Frequest-id"),
        ("Example.COM/Some Key", b"Impersonate-Extra-example.com%2Fsome%20key"),
        ("scopes", b"Impersonate-Extra-scopes"),
        ("a:b", b"Impersonate-Extra-a%3Ab"),
        ("a\r\nb", b"Impersonate-Extra-a%0D%0Ab"),
        ("é", b"Impersonate-Extra-%C3%A9"),
        ("a%2Fb", b"Impersonate-Extra-a%252fb"),
    ],
)
def test_extra_header_name_lowercases_and_percent_encodes(key: str, name: bytes) -> None:
    assert extra_header_name(key) == name


# -- a bearer token offered as a WebSocket subprotocol never leaves -----------------------

BEARER = b"base64url.bearer.authorization.k8s.io.ZXlKaGJHY2lPaUpTVXpJMU5pSjk"


@pytest.mark.parametrize(
    ("offered", "forwarded"),
    [
        ([BEARER + b", v5.channel.k8s.io"], [b"v5.channel.k8s.io"]),
        (
            [b"v5.channel.k8s.io,  " + BEARER.upper() + b" ,v4.channel.k8s.io"],
            [b"v5.channel.k8s.io, v4.channel.k8s.io"],
        ),
        ([BEARER], []),
        ([BEARER, b"v5.channel.k8s.io"], [b"v5.channel.k8s.io"]),
        ([b"v5.channel.k8s.io"], [b"v5.channel.k8s.io"]),
        # kube-apiserver splits on "," and trims with Go's strings.TrimSpace, which also
        # strips U+00A0, U+0085 and the other Unicode spaces: still a token to it
        ([b"\xc2\xa0" + BEARER + b", v5.channel.k8s.io"], [b"v5.channel.k8s.io"]),
        ([b"v5.channel.k8s.io,\xc2\x85" + BEARER + b"\xe2\x80\x83"], [b"v5.channel.k8s.io"]),
        ([b"\xe3\x80\x80" + BEARER], []),
    ],
)
def test_websocket_bearer_subprotocol_is_removed(
    offered: list[bytes], forwarded: list[bytes]
) -> None:
    headers = [(b"Sec-WebSocket-Protocol", v) for v in offered]
    head = _head(headers, upgrade=b"websocket")
    assert _named(head, b"sec-websocket-protocol") == forwarded
    assert b"bearer.authorization" not in head.lower()


def test_impersonation_block_is_per_grant_object_not_confused_by_equal_or_new_grants() -> None:
    blocks = set()
    for n in range(50):  # many short-lived grants: ids get reused, blocks must not
        grant = Grant("t", f"oidc:user-{n}", "", ("vgate:view",), ("view",), ())
        block = impersonation_block(grant)
        assert block.startswith(b"Impersonate-User: oidc:user-%d\r\n" % n)
        assert impersonation_block(grant) is block
        blocks.add(block)
    assert len(blocks) == 50
