"""The request header fields classified once while parsing (gateway.http.headers)."""

from __future__ import annotations

import pytest

from gateway.http.headers import NEVER_FORWARDED, RequestHeaders


def _forwarded(headers: RequestHeaders) -> list[tuple[bytes, bytes]]:
    pieces = headers.forwardable()
    assert len(pieces) % 4 == 0
    return [(pieces[i], pieces[i + 2]) for i in range(0, len(pieces), 4)]


def test_fields_read_by_later_steps() -> None:
    h = RequestHeaders.of(
        [
            (b"HOST", b"first.example.com"),
            (b"Host", b"t1.example.com"),
            (b"authorization", b"Bearer one"),
            (b"Authorization", b"Bearer two"),
            (b"Content-Length", b"12"),
            (b"EXPECT", b"100-continue"),
            (b"Upgrade", b"SPDY/3.1"),
            (b"Upgrade", b"websocket"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"x-forwarded-for", b"5.6.7.8, 9.9.9.9"),
            (b"Sec-WebSocket-Protocol", b"v5.channel.k8s.io"),
        ]
    )
    assert h.host == b"t1.example.com" and h.hosts == 2  # two: refused by `problem`
    assert h.problem(http11=True) == (400, "too many Host headers")
    assert h.authorization == b"Bearer one"  # the first
    assert h.content_length == 12 and not h.chunked
    assert h.expect
    assert h.upgrade == b"SPDY/3.1, websocket"  # one list: not one protocol, refused
    assert h.forwarded_for == [b"1.2.3.4", b"5.6.7.8, 9.9.9.9"]
    assert h.websocket_protocols == [b"v5.channel.k8s.io"]
    assert not h.impersonation
    assert _forwarded(h) == []  # every one of these is the gateway's to set
    assert len(h.fields) == 11
    assert h.get(b"upgrade") == b"SPDY/3.1"
    assert h.get(b"accept") is None


def test_framing_fields() -> None:
    assert RequestHeaders.of([(b"Transfer-Encoding", b"chunked")]).chunked
    assert RequestHeaders.of([(b"Content-Length", b"x1")]).content_length == -1
    bare = RequestHeaders.of([(b"Accept", b"*/*")])
    assert bare.content_length is None and not bare.chunked and not bare.expect
    assert bare.authorization is None and bare.upgrade is None and bare.host is None


@pytest.mark.parametrize(
    "name",
    [
        *sorted(NEVER_FORWARDED),
        b"Impersonate-User",
        b"IMPERSONATE-GROUP",
        b"impersonate-uid",
        b"Impersonate-Extra-x",
        b"X-Remote-User",
        b"x-remote-group",
        b"X-REMOTE-EXTRA-scopes",
        b"Proxy-Authorization",
        b"AUTHORIZATION",
        b"Audit-Id",
    ],
)
def test_never_forwarded_in_any_case(name: bytes) -> None:
    h = RequestHeaders.of([(b"Accept", b"*/*"), (name, b"secret"), (name.upper(), b"secret")])
    assert _forwarded(h) == [(b"Accept", b"*/*")]


def test_forwarded_fields_keep_order_case_and_repeats() -> None:
    fields = [
        (b"User-Agent", b"kubectl/v1.31"),
        (b"accept", b"a"),
        (b"Accept", b"b"),
        (b"Kubectl-Command", b"kubectl get"),
    ]
    assert _forwarded(RequestHeaders.of(fields)) == fields


def test_connection_named_fields_are_dropped_wherever_they_appear() -> None:
    h = RequestHeaders.of(
        [
            (b"X-Before", b"1"),
            (b"Connection", b"x-before, X-After"),
            (b"x-after", b"2"),
            (b"X-Kept", b"3"),
            (b"connection", b" keep-alive ,, close"),
        ]
    )
    assert h.connection_named == {b"x-before", b"x-after"}
    assert _forwarded(h) == [(b"X-Kept", b"3")]


def test_connection_naming_only_hop_by_hop_fields_keeps_the_fast_path() -> None:
    h = RequestHeaders.of(
        [(b"Connection", b"keep-alive, Upgrade"), (b"X-A", b"1"), (b"Connection", b"close")]
    )
    assert h.connection_named is None
    assert h.forwardable() is h.forward
