"""The name gate (gateway.names.kube): every name is decided exactly as kube-apiserver will
read it — a name Go's header parsing would trim, join or misread never leaves the gateway,
wherever it was made (token claims, directory groups, a grant built by another step).

What the far side does is pinned against a real kube-apiserver in
tests/e2e/test_identity_headers.py; here the classes of names are checked in isolation."""

from __future__ import annotations

import pytest

from gateway.identity import Grant, usable_names
from gateway.names import kube
from gateway.names.dn import normalize_dn
from gateway.policy.engine import forwarded_name
from gateway.rewrite import impersonation_block

# every Unicode space, control, format character and line break a claim could carry, at
# either end or inside: Go trims ' ' and '\t'; the rest are refused so nothing look-alike
# (or invisible) reaches a tenant's RBAC or audit log
SPACES = [
    " ",
    "\t",
    "\u00a0",
    "\u1680",
    *[chr(c) for c in range(0x2000, 0x200B)],
    "\u202f",
    "\u205f",
    "\u3000",
    "\u2028",
    "\u2029",
    "\x85",
]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202e", "\u00ad"]
CONTROLS = ["\x00", "\r", "\n", "\r\n ", "\x0b", "\x0c", "\x1b", "\x7f", "\x9f"]


def _variants(name: str) -> list[str]:
    out = []
    for ch in (*SPACES, *INVISIBLE, *CONTROLS):
        out += [ch + name, name + ch]
    out += [name[:3] + ch + name[3:] for ch in (*SPACES[1:], *INVISIBLE, *CONTROLS)]
    return out


@pytest.mark.parametrize("name", _variants("alice@example.com"))
@pytest.mark.parametrize("kind", ["user", "group", "uid", "extra value"])
def test_names_the_api_server_would_not_read_as_written_are_refused(
    name: str, kind: kube.Kind
) -> None:
    assert kube.problem(name, kind) is not None
    with pytest.raises(kube.UnsafeName):
        kube.check(name, kind)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "\ud800",
        "alice\udfff",
        "a" * 1025,
        "é" * 513,
        None,
        42,
        b"alice",
    ],
)
def test_empty_oversized_unencodable_or_not_text(name: object) -> None:
    assert kube.problem(name, "user") is not None


@pytest.mark.parametrize(
    "name",
    [
        "system:masters",
        "system:kube-controller-manager",
        "System:masters",
        "SYSTEM:NODES",
        "sYsTeM:x",
        "system:",
        "system:serviceaccount:kube-system:default",
        "\u017fystem:masters",  # long s: case-folds to 's'
    ],
)
def test_every_spelling_of_the_reserved_prefix_is_refused_for_users_and_groups(name: str) -> None:
    for kind in ("user", "group"):
        with pytest.raises(kube.UnsafeName) as info:
            kube.check(name, kind)  # type: ignore[arg-type]
        assert info.value.reserved
    kube.check(name, "user", allow_reserved=True)  # a nested impersonation the tenant allowed


@pytest.mark.parametrize(
    "name",
    [
        "alice@example.com",
        "oidc:alice@example.com",
        "oidc:system:admin",
        "vgate:view",
        "ad:cn=team a,dc=example,dc=com",
        "Ünïcødé Nàme",
        "名前",
        "a b",
        "a" * 1024,
        "x",
        "\U0001f600",
    ],
)
def test_names_that_reach_the_api_server_unchanged_pass(name: str) -> None:
    assert kube.check(name, "user") == name
    assert kube.is_safe(name, "group")


def test_extra_keys_must_already_be_what_the_api_server_makes_of_them() -> None:
    assert kube.check("vgate.io/tenant", "extra key")
    for key in ("Vgate.io/tenant", " scopes", "scopes ", "a\u00a0b", ""):
        assert kube.problem(key, "extra key") is not None


def test_policy_names_pass_the_same_gate() -> None:
    assert usable_names(["oidc:alice", "oidc:dev ops"]) == ["oidc:alice", "oidc:dev ops"]
    for bad in (["oidc:alice "], [" oidc:dev"], ["oidc:dev\u00a0"], ["a\tb"]):
        with pytest.raises(ValueError, match="not a usable"):
            usable_names(bad)


@pytest.mark.parametrize(
    ("dn", "other"),
    [
        ("CN=admins\u00a0,DC=example,DC=com", "CN=admins,DC=example,DC=com"),
        ("CN=\u3000admins,DC=example,DC=com", "CN=admins,DC=example,DC=com"),
        ("CN=admins\t,DC=example,DC=com", "CN=admins,DC=example,DC=com"),
        ("CN=admins\u2003,DC=example,DC=com", "CN=admins\u2002,DC=example,DC=com"),
    ],
)
def test_distinct_directory_groups_never_share_a_name(dn: str, other: str) -> None:
    """The DN parser would strip any Unicode whitespace from the ends of a value: a group
    `admins<NBSP>` would match policies and RBAC written for `admins`."""
    assert normalize_dn(dn) != normalize_dn(other)  # policies match one, never both
    forwarded = forwarded_name(dn)
    assert forwarded is None  # and an invisible character is never impersonated


def test_spaces_around_dn_separators_stay_insignificant() -> None:
    assert normalize_dn("CN=Admins, OU=Groups ,DC=x") == "cn=admins,ou=groups,dc=x"
    assert forwarded_name("CN=System:Masters,DC=x") == "ad:cn=system:masters,dc=x"


@pytest.mark.parametrize(
    "grant",
    [
        Grant("t", "alice ", "", ("vgate:view",), ("view",), ()),
        Grant("t", "alice", " u-1", ("vgate:view",), ("view",), ()),
        Grant("t", "alice", "", ("vgate:view", "\tops"), ("view",), ()),
        Grant("t", "alice", "", ("vgate:view",), ("view",), (("Scopes", ("a",)),)),
        Grant("t", "alice", "", ("vgate:view",), ("view",), (("scopes", ("a\u00a0",)),)),
        Grant("t", "", "", ("vgate:view",), ("view",), ()),
    ],
)
def test_the_serialized_headers_are_checked_once_more(grant: Grant) -> None:
    """Whatever step built a grant, a name that would not arrive as written never becomes a
    header line."""
    with pytest.raises(kube.UnsafeName):
        impersonation_block(grant)


def test_a_nested_impersonation_of_a_service_account_still_serializes() -> None:
    grant = Grant(
        "t",
        "system:serviceaccount:ns:sa",
        "",
        ("team",),
        ("view",),
        (("vgate.io/original-user", ("oidc:alice",)),),
    )
    assert impersonation_block(grant).startswith(b"Impersonate-User: system:serviceaccount:")
