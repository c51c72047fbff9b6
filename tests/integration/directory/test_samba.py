"""The LDAP code against a real Samba AD domain controller."""

from __future__ import annotations

import asyncio
import time

import ldap3
import pytest

from gateway.directory import Directory, DirectoryUnavailable
from gateway.directory.errors import DirectoryError
from gateway.directory.source import LdapSource
from gateway.metrics import Metrics
from gateway.names.dn import normalize_dn
from tests.support.directory.corp import BULK_GROUPS, Corp
from tests.support.directory.samba import BASE, GLOBAL_SECURITY_GROUP, Seeder
from tests.support.pki import TestCA

METHODS = [pytest.param({}, id="tokenGroups"), pytest.param({"token_groups": False}, id="in-chain")]


def names(corp: Corp, user: str, **overrides) -> set[str]:
    m = LdapSource(corp.ldap(**overrides)).lookup(corp.upn(user))
    assert m.found and m.active
    return {g.name for g in m.groups}


@pytest.mark.parametrize("how", METHODS)
def test_nested_three_levels(corp: Corp, how: dict) -> None:
    source = LdapSource(corp.ldap(**how))
    m = source.lookup(corp.upn("alice"))
    assert m.method == ("tokenGroups" if not how else "in-chain")
    got = {g.name for g in m.groups}
    assert {
        "sre-oncall",
        "platform-admins",
        "k8s-tenant1-admins",
        "team-web",
        "Domain Users",
    } <= got
    assert normalize_dn(corp.groups["k8s-tenant1-admins"]) in m.keys
    assert corp.sids["k8s-tenant1-admins"] in m.keys
    bob = source.lookup(corp.upn("bob"))
    assert "k8s-tenant1-admins" not in {g.name for g in bob.groups}


@pytest.mark.parametrize("how", METHODS)
def test_cycle_is_harmless(corp: Corp, how: dict) -> None:
    started = time.monotonic()
    got = names(corp, "dave", **how)
    assert {"cycle-a", "cycle-b", "cycle-c"} <= got
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("how", METHODS)
def test_user_in_more_groups_than_a_page(corp: Corp, how: dict) -> None:
    got = names(corp, "erin", page_size=100, **how)
    assert sum(1 for n in got if n.startswith("bulk-")) == BULK_GROUPS
    assert "k8s-tenant2-viewers" in got  # nested above the last of them


def test_plain_memberof_when_nesting_is_off(corp: Corp) -> None:
    got = names(corp, "alice", nested=False)
    assert "sre-oncall" in got and "k8s-tenant1-admins" not in got


@pytest.mark.parametrize("how", METHODS)
def test_primary_group_counts(corp: Corp, how: dict) -> None:
    got = names(corp, "frank", **how)
    assert "k8s-primary" in got
    assert "primary-parent" in got  # groups holding the primary group count too
    assert "Domain Users" not in got


def test_disabled_account_gets_no_groups(corp: Corp) -> None:
    m = LdapSource(corp.ldap()).lookup(corp.upn("carol"))
    assert m.found and m.disabled and not m.active and m.groups == ()
    assert m.why_inactive == "account disabled in the directory"


@pytest.mark.parametrize(
    "value",
    [
        "*)(objectClass=*",
        "*",
        "alice@corp.example.com)(|(cn=*",
        "al\x00ice@corp.example.com",
        "ålice@corp.example.com",
        "\\",
        "x" * 300,
    ],
)
def test_hostile_usernames_find_nothing(corp: Corp, value: str) -> None:
    source = LdapSource(corp.ldap())
    assert not source.lookup(value).found
    assert source.lookup(corp.upn("alice")).found  # and the connection still works


def test_non_ascii_name_is_found_through_escaping(corp: Corp) -> None:
    m = LdapSource(corp.ldap()).lookup("jürgen@corp.example.com")
    assert m.found and m.dn == corp.users["jurgen"]


@pytest.mark.parametrize("tls", ["ldaps", "starttls"])
def test_tls_with_ca_verification(corp: Corp, tls: str) -> None:
    url = corp.dc.ldaps_url if tls == "ldaps" else corp.dc.ldap_url
    assert names(corp, "alice", tls=tls, urls=[url])
    other = TestCA(corp.dir / f"other-ca-{tls}")
    with pytest.raises(DirectoryError) as exc:
        LdapSource(corp.ldap(tls=tls, urls=[url], ca_file=other.cert_file)).lookup("x")
    assert exc.value.kind == "tls"
    assert "certificate" in str(exc.value).lower()


def test_wrong_bind_password_is_a_clear_error(corp: Corp) -> None:
    cfg = corp.ldap(bind_password_file=corp.password_file("not-the-password"))
    with pytest.raises(DirectoryError) as exc:
        LdapSource(cfg).lookup(corp.upn("alice"))
    assert exc.value.kind == "bind"
    assert "wrong password" in str(exc.value) and "svc-vgate" in str(exc.value)


def test_failover_to_the_next_url(corp: Corp) -> None:
    cfg = corp.ldap(urls=["ldap://127.0.0.1:1", corp.dc.ldap_url])
    source = LdapSource(cfg)
    assert source.lookup(corp.upn("alice")).found
    assert source.connector._preferred == 1  # next connections start with the good one


def test_connections_are_reused(corp: Corp) -> None:
    source = LdapSource(corp.ldap())
    for _ in range(5):
        source.lookup(corp.upn("alice"))
    assert source._idle.qsize() == 1


def test_explain_chains(corp: Corp) -> None:
    m = LdapSource(corp.ldap()).lookup(corp.upn("alice"), chains=True)
    top = next(g for g in m.groups if g.name == "k8s-tenant1-admins")
    assert top.via == (corp.groups["sre-oncall"], corp.groups["platform-admins"])


@pytest.mark.slow
def test_slow_directory_times_out_and_the_loop_keeps_running(corp: Corp, running_dc) -> None:
    cfg = corp.ldap(timeout_seconds=1, connect_timeout_seconds=1, max_staleness_seconds=0)
    directory = Directory(cfg, LdapSource(cfg), Metrics())

    async def run() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        started = time.monotonic()
        with pytest.raises(DirectoryUnavailable):
            await directory.membership(corp.upn("alice"))
        t.cancel()
        return time.monotonic() - started, ticks

    running_dc.pause()
    took, ticks = asyncio.run(run())
    running_dc.resume()
    assert 0.9 < took < 4.5
    assert ticks > took * 50  # the event loop never stalled
    directory.close()


@pytest.mark.slow
def test_stopped_then_restarted_directory(corp: Corp, running_dc) -> None:
    source = LdapSource(corp.ldap())
    assert source.lookup(corp.upn("alice")).found
    running_dc.stop()
    with pytest.raises(DirectoryError) as exc:
        source.lookup(corp.upn("alice"))
    assert exc.value.kind in ("connect", "timeout")
    running_dc.start()
    assert source.lookup(corp.upn("alice")).found  # a dead pooled connection is replaced


def test_group_base_limits_resolution(corp: Corp) -> None:
    m = LdapSource(corp.ldap(group_base_dn=f"OU=Groups,{BASE}")).lookup(corp.upn("alice"))
    unresolved = [g for g in m.groups if g.dn is None]
    assert unresolved  # Domain Users / builtin groups stay as SIDs
    assert all(g.name == g.sid for g in unresolved)


# RFC 4514 edge cases, as the DC itself writes them: a trailing and a leading space, a
# leading '#', a comma inside the name (DN as written to create it, how a policy spells it)
EDGE_GROUPS = {
    "edge-trailing ": (r"CN=edge-trailing\ ", r"CN=Edge-Trailing\20"),
    " edge-leading": (r"CN=\ edge-leading", r"cn=\20edge-leading"),
    "#edge-hash": (r"CN=\#edge-hash", r"CN=\23EDGE-hash"),
    "edge, comma": (r"CN=edge\, comma", r"CN=edge\2C comma"),
}


def _edge_world(corp: Corp) -> dict[str, str]:
    """The edge groups (name → DN as the DC returns it) and their member `edgar`, created
    once per session."""
    if "edgar" in corp.users:
        return {name: corp.groups[name] for name in EDGE_GROUPS}
    conn = corp.dc.admin()
    seeder = Seeder(conn)
    groups_ou = f"OU=Groups,{BASE}"
    corp.users["edgar"] = seeder.user("edgar", f"OU=People,{BASE}")
    for name, (rdn, _) in EDGE_GROUPS.items():
        dn = f"{rdn},{groups_ou}"
        assert conn.add(
            dn,
            ["top", "group"],
            {"sAMAccountName": f"edge{len(corp.groups)}", "groupType": GLOBAL_SECURITY_GROUP},
        ), conn.result
        conn.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["cn"])
        assert conn.entries[0].cn.value == name  # the DC kept the space / '#' / comma
        corp.groups[name] = conn.entries[0].entry_dn
        seeder.add_members(dn, [corp.users["edgar"]])
    conn.unbind()
    return {name: corp.groups[name] for name in EDGE_GROUPS}


@pytest.mark.parametrize("how", METHODS)
def test_groups_with_rfc4514_edge_names(corp: Corp, how: dict) -> None:
    """A group whose name ends or starts with a space, starts with '#' or holds a comma is
    matched by a policy naming its DN in any RFC 4514 spelling, and never by the group
    without the space; explaining chains (normalizing every memberOf value) works."""
    dns = _edge_world(corp)
    m = LdapSource(corp.ldap(**how)).lookup(corp.upn("edgar"), chains=True)
    assert m.found and m.active
    got = {g.dn: g for g in m.groups if g.dn}
    for name, (_, policy_rdn) in EDGE_GROUPS.items():
        assert dns[name] in got, (dns[name], sorted(got))
        assert got[dns[name]].via == ()  # a direct membership, its chain found
        assert normalize_dn(f"{policy_rdn},OU=Groups,{BASE}") in m.keys
    assert normalize_dn(f"CN=edge-trailing,OU=Groups,{BASE}") not in m.keys
    assert normalize_dn(f"CN=edge-leading,OU=Groups,{BASE}") not in m.keys
