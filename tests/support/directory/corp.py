"""Fixtures: one real Samba AD DC per test session, seeded over LDAP with the corp below."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config.model import LDAP
from tests.support.directory.samba import (
    BASE,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SambaDC,
    Seeder,
    unavailable,
)
from tests.support.pki import TestCA
from tests.support.tiers import tool_missing

BULK_GROUPS = 320


@dataclass
class Corp:
    """The seeded directory: DNs and SIDs the tests refer to."""

    dc: SambaDC
    ca: TestCA
    dir: Path
    groups: dict[str, str] = field(default_factory=dict)  # name -> DN
    users: dict[str, str] = field(default_factory=dict)  # name -> DN
    sids: dict[str, str] = field(default_factory=dict)  # group name -> SID

    @staticmethod
    def upn(user: str) -> str:
        return f"{user}@corp.example.com"

    def password_file(self, password: str = SERVICE_PASSWORD) -> Path:
        path = self.dir / f"bind-{abs(hash(password))}.pw"
        path.write_text(password + "\n")
        return path

    def ldap(self, **overrides) -> LDAP:
        fields = dict(
            urls=[self.dc.ldap_url],
            tls="none",
            bind_dn=SERVICE_DN,
            bind_password_file=self.password_file(),
            user_base_dn=BASE,
            group_base_dn=BASE,
            timeout_seconds=3,
            connect_timeout_seconds=2,
            flush_file=self.dir / "flush",
        )
        fields.update(overrides)
        if fields["tls"] != "none" and "ca_file" not in overrides:
            fields["ca_file"] = self.ca.cert_file
        return LDAP(**fields)


def _seed(dc: SambaDC, corp: Corp) -> None:
    conn = dc.admin()
    s = Seeder(conn)
    people, groups = s.ou("People"), s.ou("Groups")
    g = corp.groups
    for name in (
        "k8s-tenant1-admins",
        "platform-admins",
        "sre-oncall",
        "team-web",
        "team-data",
        "k8s-tenant2-viewers",
        "cycle-a",
        "cycle-b",
        "cycle-c",
        "k8s-primary",
        "primary-parent",
    ):
        g[name] = s.group(name, groups)
    u = corp.users
    for name in ("alice", "bob", "dave", "erin", "frank", "henry"):
        u[name] = s.user(name, people)
    u["carol"] = s.user("carol", people, disabled=True)
    u["jurgen"] = s.user("jurgen", people)
    conn.modify(
        u["jurgen"], {"userPrincipalName": [("MODIFY_REPLACE", ["jürgen@corp.example.com"])]}
    )
    # three levels: alice ∈ sre-oncall ∈ platform-admins ∈ k8s-tenant1-admins
    s.add_members(g["k8s-tenant1-admins"], [g["platform-admins"]])
    s.add_members(g["platform-admins"], [g["sre-oncall"]])
    s.add_members(g["sre-oncall"], [u["alice"], u["henry"]])
    s.add_members(g["team-web"], [u["alice"], u["bob"]])
    s.add_members(g["k8s-tenant1-admins"], [u["carol"]])  # but carol is disabled
    # a cycle: a ∈ b ∈ c ∈ a, dave in a
    s.add_members(g["cycle-b"], [g["cycle-a"]])
    s.add_members(g["cycle-c"], [g["cycle-b"]])
    s.add_members(g["cycle-a"], [g["cycle-c"], u["dave"]])
    # frank's primary group, nested in another group
    s.add_members(g["k8s-primary"], [u["frank"]])
    s.set_primary_group(u["frank"], g["k8s-primary"])
    s.remove_members(f"CN=Domain Users,CN=Users,{BASE}", [u["frank"]])
    s.add_members(g["primary-parent"], [g["k8s-primary"]])
    # erin: in BULK_GROUPS groups, the last nested into k8s-tenant2-viewers
    bulk = [s.group(f"bulk-{i:03d}", groups) for i in range(BULK_GROUPS)]
    for dn in bulk:
        s.add_members(dn, [u["erin"]])
    s.add_members(g["k8s-tenant2-viewers"], [bulk[-1]])
    g["bulk-last"] = bulk[-1]
    for name in ("k8s-tenant1-admins", "k8s-tenant2-viewers", "k8s-primary", "team-web"):
        corp.sids[name] = s.sid(g[name])
    conn.unbind()


@pytest.fixture(scope="session")
def corp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corp]:
    why = unavailable()
    if why:
        tool_missing(why)
    base = tmp_path_factory.mktemp("samba")
    ca = TestCA(base / "pki")
    started = time.monotonic()
    dc = SambaDC(base / "dc", ca).provision().start()
    corp = Corp(dc, ca, base)
    try:
        _seed(dc, corp)
        print(
            f"samba DC on {dc.ip} provisioned, started and seeded in "
            f"{time.monotonic() - started:.1f}s"
        )
        yield corp
    finally:
        dc.stop()


@pytest.fixture
def running_dc(corp: Corp) -> Iterator[SambaDC]:
    """The DC, guaranteed running (and un-paused) again after the test."""
    yield corp.dc
    if corp.dc.running:
        corp.dc.resume()
    else:
        corp.dc.start()
