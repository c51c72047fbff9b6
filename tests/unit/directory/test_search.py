"""Unit tests for what Samba cannot show: AD's 1000-entry size limit and ranged values."""

from __future__ import annotations

import pytest

from gateway.directory.errors import DirectoryError
from gateway.directory.lookup import Lookup
from gateway.directory.search import Entry, all_values, paged_search, read_entry
from gateway.names.sid import sid_to_bytes
from tests.support.directory.fakes import BASE, SizeLimitedConnection, ldap_config


def groups(n: int) -> dict[str, dict[str, list[bytes]]]:
    return {
        f"CN=g{i},{BASE}": {
            "objectSid": [sid_to_bytes(f"S-1-5-21-1-2-3-{5000 + i}")],
            "sAMAccountName": [f"g{i}".encode()],
        }
        for i in range(n)
    }


def test_unpaged_search_over_the_size_limit_is_an_error_not_a_short_list() -> None:
    conn = SizeLimitedConnection(groups(1200))
    conn.search(BASE, "(objectClass=group)", "SUBTREE", ["cn"])  # what naive code does
    assert conn.result["result"] == 4
    found = paged_search(conn, BASE, "(objectClass=group)", ["cn"], page_size=500, limit=5000)
    assert len(found) == 1200  # every entry, across three pages; referrals skipped
    assert len(conn.searches) == 4


def test_paged_search_refuses_past_the_limit() -> None:
    conn = SizeLimitedConnection(groups(300))
    with pytest.raises(DirectoryError) as exc:
        paged_search(conn, BASE, "(objectClass=group)", ["cn"], page_size=100, limit=250)
    assert exc.value.kind == "too_many"


def test_size_limit_error_is_reported_as_such() -> None:
    conn = SizeLimitedConnection(groups(5))
    conn.result = {"result": 4, "description": "sizeLimitExceeded"}
    conn.search = lambda *a, **k: False  # type: ignore[method-assign]
    with pytest.raises(DirectoryError) as exc:
        paged_search(conn, BASE, "(x=y)", [], page_size=10, limit=10)
    assert exc.value.kind == "size_limit"


def test_ranged_member_values_are_read_to_the_end() -> None:
    members = [f"CN=u{i},{BASE}".encode() for i in range(4000)]
    conn = SizeLimitedConnection({f"CN=big,{BASE}": {"member": members}}, max_values=1500)
    entry = read_entry(conn, f"CN=big,{BASE}", ["member"])
    assert entry is not None and "member;range=0-1499" in entry.raw
    values = all_values(conn, entry, "member", limit=10_000)
    assert values == members
    assert [s[2] for s in conn.searches[1:]] == [["member;range=1500-*"], ["member;range=3000-*"]]


def test_plain_values_need_no_extra_round_trip() -> None:
    conn = SizeLimitedConnection({})
    entry = Entry("CN=x", {"memberOf": [b"CN=a", b"CN=b"]})
    assert all_values(conn, entry, "memberOf", limit=10) == [b"CN=a", b"CN=b"]
    assert conn.searches == []


def test_plain_values_over_the_limit_are_too_many() -> None:
    """The limit holds for values that come whole, as tokenGroups does (it was checked
    only for ranged values, so `max_groups` did not bound the default tokenGroups path)."""
    conn = SizeLimitedConnection({})
    entry = Entry("CN=x", {"tokenGroups": [b"%d" % i for i in range(11)]})
    assert len(all_values(conn, entry, "tokenGroups", limit=11)) == 11
    with pytest.raises(DirectoryError) as exc:
        all_values(conn, entry, "tokenGroups", limit=10)
    assert exc.value.kind == "too_many"


def test_sid_resolution_in_batches_keeps_unresolved_sids() -> None:
    entries = groups(250)
    conn = SizeLimitedConnection(entries)
    sids = [f"S-1-5-21-1-2-3-{5000 + i}" for i in range(250)] + ["S-1-5-32-545"]
    resolved = Lookup(ldap_config()).resolve_sids(conn, sids)
    assert len(resolved) == 251
    assert resolved[-1].dn is None and resolved[-1].sid == "S-1-5-32-545"
    assert resolved[0].dn == f"CN=g0,{BASE}"
    assert len(conn.searches) >= 3  # 100 SIDs per filter
    assert all(f.count("objectSid=") <= 100 for _, f, _ in conn.searches)


USER_DN = f"CN=gina,OU=People,{BASE}"
USER_SID = sid_to_bytes("S-1-5-21-1-2-3-1200")


@pytest.mark.parametrize(
    ("attrs", "locked"),
    [
        ({"msDS-User-Account-Control-Computed": [b"16"], "lockoutTime": [b"0"]}, True),
        (
            {"msDS-User-Account-Control-Computed": [b"0"], "lockoutTime": [b"133000000000000000"]},
            False,
        ),  # the lockout has expired: AD's computed flag is authoritative
        ({"lockoutTime": [b"133000000000000000"]}, True),  # no computed flag: lockoutTime says
        ({"lockoutTime": [b"0"]}, False),
    ],
)
def test_locked_accounts_get_no_groups(attrs: dict, locked: bool) -> None:
    raw = {
        "objectSid": [USER_SID],
        "userAccountControl": [b"512"],
        "primaryGroupID": [b"513"],
        "tokenGroups": [sid_to_bytes("S-1-5-21-1-2-3-513")],
        **attrs,
    }
    conn = SizeLimitedConnection({USER_DN: raw})
    m = Lookup(ldap_config()).run(conn, "gina@corp.example.com")
    assert m.found and m.locked is locked
    assert (m.groups == ()) is locked
    assert m.active is not locked


@pytest.mark.parametrize("matches", [2, 3])
def test_several_matching_entries_mean_not_found(matches: int) -> None:
    """Three or more were a `too_many` error: the directory marked down (503s for others),
    later a 403 about too many groups; several matches are "not found", as two were."""
    raw = {"objectSid": [USER_SID], "userAccountControl": [b"512"]}
    entries = {USER_DN: raw, **{f"CN=gina{i},{BASE}": raw for i in range(2, matches + 1)}}
    conn = SizeLimitedConnection(entries)
    assert not Lookup(ldap_config()).run(conn, "gina@corp.example.com").found
