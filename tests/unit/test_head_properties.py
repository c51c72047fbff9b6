"""Properties of the request-head and identity code, over generated heads and claims.

For any token claims and any request head a client can put on the wire, what leaves the
gateway is either nothing (the request is refused) or a head carrying exactly the identity
headers the policy grants — each one read by Go exactly as written — and nothing the client
wrote in an `Impersonate-*`, `X-Remote-*`, forwarding or credential header. For any framing
and `Host` combination, a head is forwarded only when a strict HTTP/1.1 server would accept
it. A real gateway, raw sockets, a scripted upstream recording what reaches it.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.rewrite import private_cookie_names
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread
from tests.support.scripted import ScriptedUpstream

PROFILE = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TARGET = b"/clusters/live/api/v1/namespaces/default/pods"
_serial = itertools.count()
pytestmark = pytest.mark.slow  # 600 generated requests, a few seconds


@pytest.fixture(scope="module")
def issuers() -> Iterator[dict[str, CraftingIssuer]]:
    made = {"oidc:": CraftingIssuer().start(), "": CraftingIssuer().start()}
    yield made
    for issuer in made.values():
        issuer.down()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, issuers, upstream: ScriptedUpstream) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("properties")
    (d / "policies").mkdir()
    (d / "policies" / "live.yaml").write_text(
        yaml.safe_dump(
            {"tenant": "live", "roles": {"view": {"groups": ["oidc:developers", "developers"]}}}
        )
    )
    (d / "token").write_text("upstream-secret\n")
    config = {
        "routing": {"path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {
                    "issuer": i.issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "username_prefix": prefix,
                    "groups_claim": "groups",
                    "groups_prefix": prefix,
                }
                for prefix, i in issuers.items()
            ]
        },
        "policies": str(d / "policies"),
        "audit": {"file": str(d / "audit.log")},
        "tenants": [
            {
                "name": "live",
                "upstream": f"http://127.0.0.1:{upstream.port}",
                "token_file": str(d / "token"),
            }
        ],
    }
    with GatewayThread(d, config) as gw:
        gw.gateway.private_cookies = private_cookie_names(["vgate_portal"])
        yield gw


def _send(gw: GatewayThread, raw: bytes) -> tuple[int, bytes]:
    """(status, Audit-ID) of the gateway's answer to `raw`."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(raw)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head = reply.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 "), reply[:300]
    audit = next(
        (
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"audit-id:")
        ),
        b"",
    )
    return int(head[9:12]), audit


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (n.strip().lower(), v.strip())
        for line in head.split(b"\r\n")[1:]
        if line
        for n, _, v in [line.partition(b":")]
    ]


def _go_reads(value: bytes) -> bytes:
    """What Go's net/textproto makes of a header value: ' ' and '\\t' trimmed."""
    return value.strip(b" \t")


# -- identities: what the IdP may write, and the head a client may send ------------------

SPACES = " \t\u00a0\u2002\u3000\u200b\ufeff\u2028\x85\x00\r\n"
clean_names = st.from_regex(r"[a-z][a-z0-9.]{0,12}@example\.com", fullmatch=True)
names = st.one_of(
    clean_names,
    clean_names,
    st.builds(
        lambda a, n, b: a + n + b,
        st.text(SPACES, max_size=2),
        st.sampled_from(
            [
                "alice@example.com",
                "system:kube-controller-manager",
                "System:masters",
                "SYSTEM:x",
                "developers",
                "u-alice",
            ]
        ),
        st.text(SPACES, max_size=2),
    ),
    st.text(max_size=24),
    st.sampled_from(["\ud800", "a\udfff", "é" * 600, "x" * 1030, ""]),
)
# header names a client must never get through, in any letter case
FORBIDDEN = [
    "Impersonate-User",
    "Impersonate-Group",
    "Impersonate-Uid",
    "Impersonate-Extra-scopes",
    "Impersonate-Extra-vgate.io%2Ftenant",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Remote-Extra-Scopes",
    "Authorization",
    "Proxy-Authorization",
    "Audit-ID",
    "X-Real-Ip",
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Host",
    "X-Forwarded-Proto",
    "X-Client-Ip",
    "True-Client-Ip",
    "CF-Connecting-IP",
    "X-Original-Forwarded-For",
    "Via",
]
cases = st.sampled_from([str.lower, str.upper, str.title, lambda s: s])
evil_fields = st.lists(st.tuples(st.sampled_from(FORBIDDEN), cases), max_size=8)
# without Impersonate-* (which the gateway refuses outright: kubectl --as is not allowed)
passing_fields = st.lists(
    st.tuples(st.sampled_from([n for n in FORBIDDEN if not n.startswith("Impersonate")]), cases),
    max_size=8,
)
benign_fields = st.lists(
    st.sampled_from(["X-Benign", "User-Agent", "Accept", "X-Request-Id"]), max_size=3
)


def _clean(name: str, *, reservable: bool) -> bool:
    """An independent statement of what must get through: printable text Go reads as
    written (no surrounding whitespace), of bounded size, not a `system:` name."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return False
    return (
        0 < size <= 1024
        and name.isprintable()
        and name == name.strip()
        and not (reservable and name[:7].casefold() == "system:")
    )


@PROFILE
@given(
    prefix=st.sampled_from(["oidc:", ""]),
    email=names,
    sub=names,
    extra_groups=st.lists(names, max_size=2),
    evil=st.one_of(passing_fields, evil_fields),
    benign=benign_fields,
    portal_cookie=st.booleans(),
)
def test_only_the_granted_identity_leaves(
    gateway, issuers, upstream, prefix, email, sub, extra_groups, evil, benign, portal_cookie
) -> None:
    issuer = issuers[prefix]
    n = next(_serial)
    token = issuer.sign(
        issuer.claims(email=email, sub=sub, groups=["developers", *extra_groups], jti=f"p{n}")
    ).encode()
    lines = [f"{case(name)}: EVIL{n}x{i}".encode() for i, (name, case) in enumerate(evil)]
    lines += [f"{name}: BENIGN{n}".encode() for name in benign]
    cookie = f"keep=BENIGN{n}; vgate_portal=EVIL{n}c" if portal_cookie else f"keep=BENIGN{n}"
    lines.append(b"Cookie: " + cookie.encode())
    raw = (
        b"GET "
        + TARGET
        + b" HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer "
        + token
        + b"\r\n"
        + b"".join(line + b"\r\n" for line in lines)
        + b"Connection: close\r\n\r\n"
    )
    before = len(upstream.heads)
    status, audit_id = _send(gateway, raw)
    arrived = [h for h in upstream.heads[before:] if audit_id and audit_id in h]
    names_ok = (
        _clean(prefix + email, reservable=True)
        and _clean(sub, reservable=False)
        and (not prefix or _clean(email, reservable=False))
        and all(
            _clean(prefix + g, reservable=True) and _clean(g, reservable=False)
            for g in extra_groups
        )
    )
    impersonating = any(name.startswith("Impersonate") for name, _ in evil)
    event("refused" if not arrived else "forwarded")
    if not arrived:
        assert status in (400, 401, 403), status
        assert not (names_ok and not impersonating), (status, email, sub, extra_groups)
        return
    assert status == 200 and names_ok and not impersonating
    head = arrived[0]
    assert f"EVIL{n}".encode() not in head  # nothing from a forbidden header, nor the cookie
    fields = _fields(head)
    identity = sorted((k, v) for k, v in fields if k.startswith(b"impersonate-"))
    assert all(_go_reads(v) == v for _, v in identity)  # the API server reads each as sent
    expected = sorted(
        [
            (b"impersonate-user", (prefix + email).encode()),
            (b"impersonate-uid", sub.encode()),
            (b"impersonate-group", b"vgate:view"),
        ]
    )
    assert identity == expected  # no extras: the request id travels as Audit-ID
    credentials = {
        k: v
        for k, v in fields
        if k in (b"authorization", b"audit-id", b"x-forwarded-for", b"cookie")
    }
    assert credentials == {
        b"authorization": b"Bearer upstream-secret",
        b"audit-id": audit_id,
        b"x-forwarded-for": b"127.0.0.1",
        b"cookie": f"keep=BENIGN{n}".encode(),
    }
    assert not [
        k
        for k, _ in fields
        if k.startswith(
            (
                b"x-remote-",
                b"proxy-author",
                b"x-real",
                b"forwarded",
                b"via",
                b"true-client",
                b"cf-connecting",
                b"x-client",
                b"x-original",
            )
        )
    ]
    assert len([k for k, _ in fields if k == b"host"]) == 1
    if benign:
        assert f"BENIGN{n}".encode() in head


# -- framing and Host: forwarded only when a strict server would accept the head ---------

hosts = st.lists(
    st.sampled_from([b"gw.test", b"live.k8s.test", b" gw.test ", b"a b", b"x/y", b"u@h", b""]),
    max_size=2,
)
transfer = st.lists(
    st.sampled_from(
        [
            b"chunked",
            b"Chunked",
            b"identity",
            b"gzip, chunked",
            b"chunked, chunked",
            b"xchunked",
            b" chunked",
        ]
    ),
    max_size=2,
)
lengths = st.lists(st.sampled_from([b"0", b"5", b"+5", b"-1", b"0x5", b"5, 5", b"05"]), max_size=2)
expects = st.sampled_from([None, b"100-continue", b"100-Continue", b"200-ok"])


def _strictly_acceptable(
    version: bytes, host: list[bytes], te: list[bytes], cl: list[bytes], expect: bytes | None
) -> bool:
    """RFC 9112 and Go's net/http, stated independently of the gateway's code."""
    if version == b"HTTP/1.1" and len(host) != 1:
        return False
    if len(host) > 1:
        return False
    valid_host = set(
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&'()*+,-.:;=[]_~"
    )
    if host and not set(host[0].strip(b" \t")) <= valid_host:
        return False
    if te and (version != b"HTTP/1.1" or len(te) > 1 or cl or te[0].strip().lower() != b"chunked"):
        return False
    if len(cl) > 1 or (cl and not cl[0].isdigit()):
        return False
    return expect is None or expect.lower() == b"100-continue"


@PROFILE
@given(
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    host=st.one_of(st.just([b"gw.test"]), hosts),
    te=st.one_of(st.just([]), transfer),
    cl=st.one_of(st.just([]), lengths),
    expect=expects,
)
def test_only_unambiguous_heads_leave(
    gateway, issuers, upstream, version, host, te, cl, expect
) -> None:
    issuer = issuers["oidc:"]
    token = issuer.sign(issuer.claims(groups=["developers"], jti=f"f{next(_serial)}")).encode()
    fields = [b"Host: " + h for h in host] + [b"Transfer-Encoding: " + t for t in te]
    fields += [b"Content-Length: " + c for c in cl]
    if expect is not None:
        fields.append(b"Expect: " + expect)
    body = b""
    if te:
        body = b"5\r\nhello\r\n0\r\n\r\n"
    elif cl and cl[0].isdigit():
        body = b"hello"[: int(cl[0])]
    raw = (
        b"POST "
        + TARGET
        + b" "
        + version
        + b"\r\n"
        + b"".join(f + b"\r\n" for f in fields)
        + b"Authorization: Bearer "
        + token
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    before = len(upstream.heads)
    try:
        status, _ = _send(gateway, raw)
    except AssertionError:
        status = 0  # the gateway closed without an answer
    forwarded = len(upstream.heads) > before
    event("forwarded" if forwarded else "refused")
    if _strictly_acceptable(version, host, te, cl, expect):
        assert forwarded and status == 200, (status, raw[:300])
    else:
        assert not forwarded, raw[:300]
        assert 400 <= status < 500 or status == 0


def _expecting_continue(issuers, version: bytes, *, close: bytes = b"") -> bytes:
    """A POST head with `Content-Length: 5` and `Expect: 100-continue`, body not sent."""
    issuer = issuers["oidc:"]
    token = issuer.sign(issuer.claims(groups=["developers"], jti=f"c{next(_serial)}")).encode()
    return (
        b"POST " + TARGET + b" " + version + b"\r\nHost: gw.test\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nAuthorization: Bearer " + token + b"\r\n" + close + b"\r\n"
    )


def _first_head(s: socket.socket) -> bytes:
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply


def test_a_client_waiting_for_100_continue_gets_it_first(gateway, issuers) -> None:
    """A client that sends only the head with `Expect: 100-continue` gets `100 Continue`
    before the answer (when the body comes with the head, the answer is the first head:
    `test_only_unambiguous_heads_leave`)."""
    head = _expecting_continue(issuers, b"HTTP/1.1", close=b"Connection: close\r\n")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(head)
        reply = _first_head(s)
        assert reply.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), reply[:200]
        s.sendall(b"hello")
        while b"HTTP/1.1 200 " not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    assert b"HTTP/1.1 200 " in reply, reply[:300]


def test_an_http10_client_never_gets_100_continue(gateway, issuers) -> None:
    """`Expect: 100-continue` in an HTTP/1.0 request is ignored (RFC 9110 §10.1.1): the
    client cannot know an interim answer and would take it for the response. The first
    head it reads is the answer (the scripted tenant answers without reading a body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(_expecting_continue(issuers, b"HTTP/1.0"))
        reply = _first_head(s)
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
