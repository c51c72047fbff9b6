"""Unit tests: filter escaping, SIDs, DNs."""

from __future__ import annotations

import pytest

from gateway.directory.filters import any_of, equals, escape_value
from gateway.directory.lookup import Lookup
from gateway.names.dn import normalize_dn
from gateway.names.sid import SidError, is_sid, sid_to_bytes, sid_to_str
from tests.support.directory.fakes import ldap_config


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("alice@corp.example.com", "alice@corp.example.com"),
        ("*)(objectClass=*", "\\2a\\29\\28objectClass=\\2a"),
        ("a\\b", "a\\5cb"),
        ("nul\x00byte", "nul\\00byte"),
        ("jürgen", "j\\c3\\bcrgen"),
        ("new\nline", "new\\0aline"),
    ],
)
def test_escape_value(raw: str, escaped: str) -> None:
    assert escape_value(raw) == escaped


def test_user_filter_cannot_be_widened() -> None:
    f = Lookup(ldap_config()).user_filter("*)(objectClass=*")
    assert f == (
        "(&(objectCategory=person)(objectClass=user)"
        "(userPrincipalName=\\2a\\29\\28objectClass=\\2a))"
    )
    assert f.count("(") - f.count("\\28") == f.count(")") - f.count("\\29")


def test_binary_values_and_or_filter() -> None:
    assert equals("objectSid", b"\x01\x05(") == "(objectSid=\\01\\05\\28)"
    assert any_of("cn", ["a", "b*"]) == "(|(cn=a)(cn=b\\2a))"


SID = "S-1-5-21-1475101742-2590081500-3026927243-1108"


def test_sid_round_trip() -> None:
    raw = sid_to_bytes(SID)
    assert raw[:2] == b"\x01\x05" and len(raw) == 8 + 4 * 5
    assert sid_to_str(raw) == SID
    assert sid_to_str(sid_to_bytes("S-1-5-32-545")) == "S-1-5-32-545"


@pytest.mark.parametrize(
    "bad", ["S-1-5", "S-1-5-21-x", "S-2-5-21", "S-1-5-21-4294967296", "s-1-5-21-1", "S-1-5-21-1\n"]
)
def test_malformed_sids(bad: str) -> None:
    assert not is_sid(bad)
    with pytest.raises(SidError):
        sid_to_bytes(bad)


@pytest.mark.parametrize("raw", [b"", b"\x02\x01" + bytes(10), b"\x01\x05" + bytes(6)])
def test_malformed_binary_sids(raw: bytes) -> None:
    with pytest.raises(SidError):
        sid_to_str(raw)


def test_dn_normalization() -> None:
    a = normalize_dn("CN=K8s Tenant1 Admins , OU=Groups,DC=Corp,DC=example,DC=com")
    b = normalize_dn("cn=k8s tenant1 admins,ou=groups,dc=corp,dc=EXAMPLE,dc=com")
    assert a == b == "cn=k8s tenant1 admins,ou=groups,dc=corp,dc=example,dc=com"
    for bad in ("foo", "CN=", "CN=x,,DC=y", "", "CN=a\x00"):
        with pytest.raises(ValueError):
            normalize_dn(bad)
