"""DN normalization per RFC 4514: one DN spelled two ways normalizes alike, two DNs never do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.names.dn import first_value, normalize_dn
from gateway.policy.engine import forwarded_name

BASE = "OU=Groups,DC=corp,DC=example,DC=com"


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        # an escaped trailing space is part of the value: \  and \20 are one spelling
        (rf"CN=foo\ ,{BASE}", r"cn=foo\ "),
        (rf"CN=foo\20,{BASE}", r"cn=foo\ "),
        (rf"CN=foo\ \ ,{BASE}", r"cn=foo \ "),
        # an escaped leading space and '#'
        (rf"CN=\ foo,{BASE}", r"cn=\ foo"),
        (rf"CN=\20foo,{BASE}", r"cn=\ foo"),
        (rf"CN=\#foo,{BASE}", r"cn=\#foo"),
        (rf"CN=\23foo,{BASE}", r"cn=\#foo"),
        (rf"CN=a\#b,{BASE}", "cn=a#b"),  # '#' inside a value needs no escape
        # the specials, as a character or in hex
        (rf"CN=a\,b,{BASE}", r"cn=a\,b"),
        (rf"CN=a\2cb,{BASE}", r"cn=a\,b"),
        (rf"CN=a\2Cb,{BASE}", r"cn=a\,b"),
        (rf"CN=a\+b,{BASE}", r"cn=a\+b"),
        (rf"CN=a\;b,{BASE}", r"cn=a\;b"),
        (rf"CN=a\3Bb,{BASE}", r"cn=a\;b"),
        (rf"CN=a\"b,{BASE}", r"cn=a\"b"),
        (rf"CN=a\<b\>,{BASE}", r"cn=a\<b\>"),
        (rf"CN=a\\b,{BASE}", r"cn=a\\b"),
        (rf"CN=a\5Cb,{BASE}", r"cn=a\\b"),
        (rf"CN=a=b,{BASE}", r"cn=a\=b"),
        (rf"CN=a\=b,{BASE}", r"cn=a\=b"),
        # UTF-8 as it is or in hex escapes, and its case
        (f"CN=Café,{BASE}", "cn=café"),
        (rf"CN=Caf\C3\A9,{BASE}", "cn=café"),
        (rf"CN=CAF\c3\89,{BASE}", "cn=café"),
        # any whitespace but U+0020 is kept, visibly
        (f"CN=admins\u00a0,{BASE}", r"cn=admins\c2\a0"),
        (rf"CN=admins\C2\A0,{BASE}", r"cn=admins\c2\a0"),
        # spaces around separators and ';' as a separator are insignificant
        (f" CN = foo , {BASE.replace(',', ' ; ')}", "cn=foo"),
        # a multi-valued RDN in any order
        (rf"CN=a+SN=b,{BASE}", "cn=a+sn=b"),
        (rf"sn=B+cn=A,{BASE}", "cn=a+sn=b"),
        # a value in hex (BER) form is kept as written, distinct from an escaped '#'
        (f"CN=#0403666F6F,{BASE}", "cn=#0403666f6f"),
    ],
)
def test_spellings_of_one_dn(written: str, canonical: str) -> None:
    assert normalize_dn(written) == canonical + "," + BASE.lower()


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (rf"CN=foo\ ,{BASE}", f"CN=foo,{BASE}"),  # escaped trailing space
        (rf"CN=foo\ ,{BASE}", f"CN=foo ,{BASE}"),  # ... vs an insignificant one
        (rf"CN=\ foo,{BASE}", f"CN=foo,{BASE}"),
        (rf"CN=\#foo,{BASE}", f"CN=foo,{BASE}"),
        (rf"CN=\#0403666F6F,{BASE}", f"CN=#0403666F6F,{BASE}"),
        (rf"CN=a\,b,{BASE}", f"CN=a,CN=b,{BASE}"),  # one RDN, not two
        (rf"CN=a\+b,{BASE}", f"CN=a+CN=b,{BASE}"),  # one value, not a multi-valued RDN
        (rf"CN=a\\,{BASE}", f"CN=a,{BASE}"),
        (f"CN=admins\u00a0,{BASE}", f"CN=admins,{BASE}"),
        (f"CN=admins\t,{BASE}", f"CN=admins,{BASE}"),
    ],
)
def test_different_dns_never_normalize_alike(one: str, other: str) -> None:
    assert normalize_dn(one) != normalize_dn(other)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "foo",
        "CN=",
        "CN=x,,DC=y",
        "CN=x,DC=y,",
        "CN=a+,DC=y",
        "CN=foo\\",  # a lone backslash
        r"CN=a\q,DC=y",  # not an escapable character
        r"CN=a\FF,DC=y",  # not UTF-8
        r"CN=a\00,DC=y",  # NUL
        "CN=a\x00,DC=y",
        "CN=a<b,DC=y",  # must be escaped
        'CN="quoted",DC=y',
        "CN=#0,DC=y",  # odd hex
        "CN=#zz,DC=y",
        "1CN=a,DC=y",  # not an attribute type
        "CN=x," * 1000 + "DC=y",  # too long
    ],
)
def test_not_a_dn(bad: str) -> None:
    with pytest.raises(ValueError, match="not a DN"):
        normalize_dn(bad)


def test_first_value_is_decoded() -> None:
    assert first_value(rf"CN=team\, web\ ,{BASE}") == "team, web "
    assert first_value(rf"CN=caf\C3\A9,{BASE}") == "café"
    assert first_value("not a dn") == "not a dn"


def test_a_trailing_space_group_is_forwarded_by_its_own_name() -> None:
    """The group `foo ` travels as itself, never as the name of the group `foo`."""
    assert forwarded_name(rf"CN=foo\ ,{BASE}") == "ad:" + rf"cn=foo\ ,{BASE.lower()}"
    assert forwarded_name(rf"CN=foo\20,{BASE}") == forwarded_name(rf"CN=foo\ ,{BASE}")
    assert forwarded_name(f"CN=foo,{BASE}") == f"ad:cn=foo,{BASE.lower()}"


_VALUES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=20,
)


def _escape_all(value: str) -> str:
    """`value` with every character as hex escapes of its UTF-8 bytes: always valid."""
    return "".join(f"\\{b:02X}" for b in value.encode())


def _escape_minimal(value: str) -> str:
    """`value` escaped the RFC 4514 way, the least a writer must escape."""
    out = []
    for k, c in enumerate(value):
        if c in '"+,;<>\\' or (c == " " and k in (0, len(value) - 1)) or (c == "#" and k == 0):
            out.append("\\" + c)
        else:
            out.append(c)
    return "".join(out)


@given(_VALUES, _VALUES)
def test_normalizing_is_a_canonical_form(value: str, other: str) -> None:
    """Any two spellings of one value normalize alike; the canonical form is a fixed point;
    and two values that differ other than in case never normalize alike."""
    minimal = normalize_dn(f"CN={_escape_minimal(value)},{BASE}")
    assert normalize_dn(f"CN={_escape_all(value)},{BASE}") == minimal
    assert normalize_dn(minimal) == minimal
    assert first_value(f"CN={_escape_minimal(value)},{BASE}") == value
    if value.lower() != other.lower():
        assert normalize_dn(f"CN={_escape_minimal(other)},{BASE}") != minimal
