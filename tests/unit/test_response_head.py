"""The response head relayed to the client (gateway.forward.response.client_head)."""

from __future__ import annotations

from gateway.forward.response import client_head


def _head(headers, **kw):
    args = dict(request_id=b"rid-1", method=b"GET", http11=True, keep_alive=True)
    args.update(kw)
    return client_head(200, headers, **args)


def test_hop_by_hop_dropped_in_every_spelling_seen_again_and_again() -> None:
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive"),
        (b"KEEP-ALIVE", b"timeout=5"),
        (b"transfer-Encoding", b"chunked"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Upgrade", b"h2c"),
        (b"TE", b"x"),
        (b"Trailer", b"X"),
        (b"Warning", b"299 - a"),
        (b"Warning", b"299 - b"),
    ]
    for _ in range(3):  # the second and third time, names come from the remembered table
        head, chunked, keep_alive = _head(headers)
        assert head == (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Warning: 299 - a\r\nWarning: 299 - b\r\nAudit-ID: rid-1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        assert chunked and keep_alive


def test_length_and_upstream_audit_id_kept_in_any_case() -> None:
    head, chunked, _ = _head([(b"content-LENGTH", b"2"), (b"AUDIT-ID", b"theirs")])
    assert head == b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nAUDIT-ID: theirs\r\n\r\n"
    assert not chunked


def test_http10_client_without_length_gets_close() -> None:
    head, chunked, keep_alive = _head([], http11=False)
    assert not chunked and not keep_alive
    assert head.endswith(b"Connection: close\r\n\r\n")


def test_unknown_status_code_line() -> None:
    head, _, _ = client_head(
        299,
        [(b"Content-Length", b"0")],
        request_id=b"r",
        method=b"GET",
        http11=True,
        keep_alive=True,
    )
    assert head.startswith(b"HTTP/1.1 299 Unknown\r\n")
