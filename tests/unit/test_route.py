"""Negative and unit tests for step 1 of the request path: `gateway.route.Router`.

Every trick that could make two parsers disagree about the tenant must be refused or must
land on the tenant the client plainly named — never on another one.
"""

from __future__ import annotations

import random

import pytest

from gateway.route import Refused, Route, Router

BAD_PATH = Refused(400, "request path has empty, dot or encoded-dot segments")
NO_TENANT = Refused(404, "no such tenant", names_no_tenant=True)  # said after authn
UNKNOWN_HOST = NO_TENANT  # the same answer: nothing tells names apart
NOT_ABSOLUTE = Refused(400, "request target must be an absolute path")


@pytest.fixture
def router() -> Router:
    return Router("k8s.example.com", "/clusters")


# -- hostname routing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        b"tenant1.k8s.example.com",
        b"tenant1.k8s.example.com:443",
        b"tenant1.k8s.example.com:8443",
        b"tenant1.k8s.example.com.",
        b"tenant1.k8s.example.com.:8443",
        b"TENANT1.K8S.EXAMPLE.COM",
        b"Tenant1.K8s.Example.Com:443",
        b" tenant1.k8s.example.com ",
    ],
)
def test_host_routes_to_tenant_and_keeps_target(router: Router, host: bytes) -> None:
    target = b"/api/v1/namespaces/a%2Fb/pods?watch=1&labelSelector=a%3Db"
    assert router.route(host, target) == Route("tenant1", target, "host")


def test_host_wins_over_path_prefix(router: Router) -> None:
    # A tenant1 host with a tenant2 path prefix goes to tenant1 with the path untouched.
    target = b"/clusters/tenant2/api/v1/pods"
    assert router.route(b"tenant1.k8s.example.com", target) == Route("tenant1", target, "host")


@pytest.mark.parametrize(
    "host",
    [
        b"tenant1.k8s.example.com.evil.com",
        b"evil-k8s.example.com",
        b"tenant1k8s.example.com",
        b"k8s.example.com",
        b"example.com",
        b"[::1]:443",
        b"[::1]",
        b"127.0.0.1:8443",
        b"tenant1.k8s.example.com:443:443",
    ],
)
def test_host_not_under_base_domain_is_not_a_tenant(router: Router, host: bytes) -> None:
    # Not addressed to a tenant by host: the gateway's own pages (None) ...
    assert router.route(host, b"/api/v1/pods") is None
    # ... and only the explicit path prefix can name a tenant.
    assert router.route(host, b"/clusters/tenant2/api") == Route("tenant2", b"/api", "path")


@pytest.mark.parametrize(
    "host",
    [
        b"a.tenant1.k8s.example.com",
        b".k8s.example.com",
        b"-tenant1.k8s.example.com",
        b"tenant1-.k8s.example.com",
        b"tenant_1.k8s.example.com",
        b"evil@tenant1.k8s.example.com",
        b"tenant1%2e.k8s.example.com",
        b"x" * 64 + b".k8s.example.com",
    ],
)
def test_malformed_label_under_base_domain_is_refused(router: Router, host: bytes) -> None:
    assert router.route(host, b"/api") == UNKNOWN_HOST
    # A bad host label is not silently re-routed by a path prefix either.
    assert router.route(host, b"/clusters/tenant1/api") == UNKNOWN_HOST


def test_host_routing_off_without_base_domain() -> None:
    r = Router(None, "/clusters")
    assert r.route(b"tenant1.k8s.example.com", b"/api") is None
    assert r.route(b"tenant1.k8s.example.com", b"/clusters/tenant2/x") == Route(
        "tenant2", b"/x", "path"
    )


def test_path_routing_off_without_prefix() -> None:
    r = Router("k8s.example.com", None)
    assert r.route(b"gw.example.com", b"/clusters/tenant1/api") is None


# -- path-prefix routing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        (b"/clusters/tenant1/api/v1/pods", b"/api/v1/pods"),
        (b"/clusters/tenant1/api/v1/namespaces/a%2Fb", b"/api/v1/namespaces/a%2Fb"),
        (b"/clusters/tenant1/api?watch=1&x=%2F%2e%2e", b"/api?watch=1&x=%2F%2e%2e"),
        (b"/clusters/tenant1?timeout=32s", b"/?timeout=32s"),
        (b"/clusters/tenant1", b"/"),
        (b"/clusters/tenant1/", b"/"),
        (b"/clusters/tenant1/api/", b"/api/"),
        (b"/clusters/tenant1/api?", b"/api?"),
        (b"/clusters/tenant1/apis/x/v1/%7Euser%41", b"/apis/x/v1/%7Euser%41"),
        (b"/clusters/t/api", b"/api"),
        (b"/clusters/" + b"a" * 63 + b"/api", b"/api"),
    ],
)
def test_path_prefix_forwards_rest_byte_for_byte(
    router: Router, target: bytes, forwarded: bytes
) -> None:
    route = router.route(b"gw.example.com", target)
    tenant = target.split(b"/")[2].partition(b"?")[0].decode()
    assert route == Route(tenant, forwarded, "path")


def test_path_prefix_works_without_host(router: Router) -> None:
    assert router.route(None, b"/clusters/tenant1/api") == Route("tenant1", b"/api", "path")
    assert router.route(b"", b"/clusters/tenant1/api") == Route("tenant1", b"/api", "path")


def test_prefix_with_trailing_slash_in_config() -> None:
    r = Router(None, "/clusters/")
    assert r.route(None, b"/clusters/tenant1/api") == Route("tenant1", b"/api", "path")


@pytest.mark.parametrize(
    "target",
    [
        b"/clusters/Tenant1/api",
        b"/clusters/TENANT1",
        b"/clusters/%74enant1/api",
        b"/clusters/tenant1%2F..%2Ftenant2/api",
        b"/clusters/tenant1%2ftenant2",
        b"/clusters/tenant1;x/api",
        b"/clusters/tenant1@tenant2/api",
        b"/clusters/-tenant1/api",
        b"/clusters/tenant_1/api",
        b"/clusters/" + b"a" * 64 + b"/api",
        b"/clusters/",
        b"/clusters",
        b"/clusters?x=/tenant1",
    ],
)
def test_bad_tenant_segment_is_404(router: Router, target: bytes) -> None:
    assert router.route(b"gw.example.com", target) == NO_TENANT


@pytest.mark.parametrize(
    "target",
    [
        b"/clustersx/tenant1/api",
        b"/clusters-tenant1/api",
        b"/Clusters/tenant1/api",
        b"/%63lusters/tenant1/api",
        b"/api/clusters/tenant1",
        b"/x/clusters/tenant1",
    ],
)
def test_not_the_prefix_is_not_a_tenant(router: Router, target: bytes) -> None:
    assert router.route(b"gw.example.com", target) is None


# -- traversal and encoding tricks ---------------------------------------------------------

TRICKS = [
    b"/clusters/tenant1/../tenant2/api",
    b"/clusters/tenant1/..",
    b"/clusters/tenant1/%2e%2e/tenant2/api",
    b"/clusters/tenant1/%2E%2e/tenant2/api",
    b"/clusters/tenant1/%2E%2E/tenant2/api",
    b"/clusters/tenant1/.%2e/tenant2/api",
    b"/clusters/tenant1/%2e./tenant2/api",
    b"/clusters/tenant1/%2e",
    b"/clusters/tenant1/%2e%2e",
    b"/clusters/tenant1/x%2e%2e/api",
    b"/clusters/./tenant2/api",
    b"/clusters/tenant1/./api",
    b"/clusters/%2e/tenant2/api",
    b"/./clusters/tenant2/api",
    b"/../clusters/tenant2/api",
    b"/clusters//tenant2/api",
    b"//clusters/tenant2/api",
    b"/clusters/tenant1//api",
    b"/clusters/tenant1/api//",
    b"/clusters\\tenant2\\api",
    b"/clusters/tenant1\\..\\tenant2/api",
    b"/clusters/tenant1/api\\x",
    b"/clusters/tenant1/\x00/api",
    b"/clusters/tenant1\x00/api",
    b"/clusters/tenant1%00/api",
    b"/clusters/tenant1/api%00",
    b"/clusters/tenant1/a\r\nb",
    b"/clusters/tenant1/a\nb",
    b"/clusters/tenant1/a\tb",
    b"/clusters/tenant1/a b",
    b"/clusters/tenant1/a\x7fb",
    b"/clusters/tenant1/a\x1bb",
]


@pytest.mark.parametrize("target", TRICKS)
@pytest.mark.parametrize("host", [b"gw.example.com", b"tenant1.k8s.example.com", None])
def test_traversal_and_encoding_tricks_are_refused(
    router: Router, host: bytes | None, target: bytes
) -> None:
    assert router.route(host, target) == BAD_PATH


@pytest.mark.parametrize(
    "target",
    [
        b"http://tenant2.k8s.example.com/api",
        b"https://gw.example.com/clusters/tenant2/api",
        b"tenant2.k8s.example.com:443",
        b"*",
        b"",
        b"clusters/tenant2/api",
        b"\\clusters/tenant2",
    ],
)
def test_absolute_form_and_non_path_targets_are_refused(router: Router, target: bytes) -> None:
    assert router.route(b"tenant1.k8s.example.com", target) == NOT_ABSOLUTE


def test_dots_inside_names_are_not_dot_segments(router: Router) -> None:
    target = b"/clusters/tenant1/api/v1/namespaces/a..b/configmaps/.x"
    assert router.route(None, target) == Route(
        "tenant1", b"/api/v1/namespaces/a..b/configmaps/.x", "path"
    )


# -- randomized: nothing appended after /clusters/tenant1/ reaches another tenant ------------

_ALPHABET = [
    b"/",
    b".",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%2F",
    b"%00",
    b"\\",
    b"?",
    b"#",
    b";",
    b"%",
    b"tenant2",
    b"..",
    b"clusters",
    b"a",
    b"\x00",
    b"\r",
    b"\n",
    b" ",
    b"@",
    b":",
    b"&",
    b"=",
]


def _random_tails(rng: random.Random, n: int) -> list[bytes]:
    tails = []
    for i in range(n):
        if i % 2:
            tails.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24))))
        else:
            tails.append(b"".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 12))))
    return tails


@pytest.mark.parametrize("host", [None, b"gw.example.com"])
def test_random_tails_stay_in_tenant1(router: Router, host: bytes | None) -> None:
    rng = random.Random(0x76_67_61_74_65)
    routed = refused = 0
    for tail in _random_tails(rng, 4000):
        result = router.route(host, b"/clusters/tenant1/" + tail)
        if isinstance(result, Refused):
            assert result.code == 400, tail
            refused += 1
            continue
        assert isinstance(result, Route), (tail, result)
        assert result.tenant == "tenant1", tail
        assert result.by == "path"
        assert result.target == b"/" + tail, tail  # forwarded byte for byte
        routed += 1
    # The generator exercises both outcomes, so neither branch is vacuous.
    assert routed > 100 and refused > 100


def test_random_tails_by_host_stay_in_tenant1(router: Router) -> None:
    rng = random.Random(20240601)
    for tail in _random_tails(rng, 2000):
        target = b"/" + tail
        result = router.route(b"tenant1.k8s.example.com", target)
        if isinstance(result, Refused):
            assert result.code == 400, tail
            continue
        assert result == Route("tenant1", target, "host"), tail
