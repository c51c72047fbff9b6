"""Group scoping: which of a user's own groups leave the gateway (`forward_groups`), the hard
caps on impersonation headers (431 naming the limit), and the dropped count in the audit."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config.model import Impersonation
from gateway.directory.entry import DirectoryGroup, membership
from gateway.identity import Grant, Identity, TooLarge
from gateway.policy import PolicyEngine, load_policies
from gateway.policy.model import WELL_KNOWN_ROLES
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, crafted_config
from tests.support.scripted import ScriptedUpstream

BASE = "DC=corp,DC=example,DC=com"
TEAM_WEB = f"CN=team-web,OU=Groups,{BASE}"
ADMINS = f"CN=k8s-admins,OU=Groups,{BASE}"
OTHER = f"CN=canteen,OU=Groups,{BASE}"
OTHER_SID = "S-1-5-21-1-2-3-1200"

RULES = f"""\
tenant: t1
roles:
  view: {{groups: ["oidc:developers"]}}
  admin: {{groups: ["oidc:ops"], directory_groups: ["{ADMINS}"]}}
"""


def ident(*groups: str) -> Identity:
    return Identity("oidc:alice", "u1", groups, "https://idp", 9e9)


def engine(
    tmp_path: Path, extra: str = "", star: str | None = None, caps: Impersonation | None = None
) -> PolicyEngine:
    folder = tmp_path / "p"
    folder.mkdir(exist_ok=True)
    (folder / "t1.yaml").write_text(RULES + extra)
    if star is not None:
        (folder / "star.yaml").write_text(star)
    loaded, problems = load_policies(folder, ["t1"], WELL_KNOWN_ROLES)
    assert problems == []
    return PolicyEngine(loaded, caps)


def member_of(*groups: tuple[str, str | None]):
    return membership(
        "alice@corp",
        dn=f"CN=alice,{BASE}",
        sid="S-1-5-21-1-2-3-9",
        guid=None,
        disabled=False,
        locked=False,
        method="test",
        groups=[DirectoryGroup(sid, dn, dn or sid) for sid, dn in groups],
    )


USER_GROUPS = ("oidc:developers", "oidc:ops", "oidc:canteen", "oidc:team-web", "oidc:book-club")
DIRECTORY = (("S-1-5-21-1-2-3-1100", ADMINS), ("S-1-5-21-1-2-3-1101", TEAM_WEB), (OTHER_SID, OTHER))


def decide(eng: PolicyEngine, groups=USER_GROUPS, directory=DIRECTORY) -> Grant:
    grant = eng.decide(ident(*groups), "t1", member_of(*directory) if directory else None)
    assert isinstance(grant, Grant), grant
    return grant


def test_roles_mode_is_the_default_and_sends_only_role_groups(tmp_path: Path) -> None:
    grant = decide(engine(tmp_path))
    assert grant.groups == ("vgate:admin", "vgate:view")
    assert grant.dropped_groups == len(USER_GROUPS) + len(DIRECTORY)


def test_referenced_adds_the_groups_the_policy_names(tmp_path: Path) -> None:
    grant = decide(engine(tmp_path, "forward_groups: {mode: referenced}\n"))
    assert grant.groups == (
        "vgate:admin",
        "vgate:view",
        "ad:cn=k8s-admins,ou=groups,dc=corp,dc=example,dc=com",
        "oidc:developers",
        "oidc:ops",
    )
    assert grant.dropped_groups == 5


def test_referenced_counts_every_rule_of_the_tenant_and_of_star(tmp_path: Path) -> None:
    star = (
        f'tenant: "*"\nroles:\n  edit: {{groups: ["oidc:book-club"], directory_groups: '
        f'["{OTHER_SID}"]}}\n'
    )
    grant = decide(engine(tmp_path, "forward_groups: {mode: referenced}\n", star=star))
    assert "oidc:book-club" in grant.groups
    assert "ad:cn=canteen,ou=groups,dc=corp,dc=example,dc=com" in grant.groups  # by SID


def test_allow_list_adds_by_name_and_by_expression(tmp_path: Path) -> None:
    text = 'forward_groups:\n  mode: referenced\n  names: ["oidc:canteen"]\n  match: "team-"\n'
    grant = decide(engine(tmp_path, text))
    assert {
        "oidc:canteen",
        "oidc:team-web",
        "ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com",
    } <= set(grant.groups)
    assert "oidc:book-club" not in grant.groups
    # the allow-list also applies in roles mode (the older forward_directory_groups rule)
    roles_only = decide(engine(tmp_path, 'forward_groups: {match: "team-"}\n'))
    assert roles_only.groups == (
        "vgate:admin",
        "vgate:view",
        "ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com",
        "oidc:team-web",
    )


def test_all_sends_every_group(tmp_path: Path) -> None:
    grant = decide(engine(tmp_path, "forward_groups: {mode: all}\n"))
    assert len(grant.groups) == 2 + len(USER_GROUPS) + len(DIRECTORY)
    assert grant.dropped_groups == 0


def test_the_older_rule_is_the_same_as_forward_groups_match(tmp_path: Path) -> None:
    old = decide(engine(tmp_path, 'forward_directory_groups: {match: "^CN=team-"}\n'))
    new = decide(engine(tmp_path, 'forward_groups: {match: "^CN=team-"}\n'))
    assert (
        old.groups
        == new.groups
        == ("vgate:admin", "vgate:view", "ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com")
    )


def test_a_tenant_file_sets_the_mode_over_star(tmp_path: Path) -> None:
    star = 'tenant: "*"\nroles: {}\nforward_groups: {mode: all}\n'
    assert decide(engine(tmp_path, star=star)).dropped_groups == 0
    grant = decide(engine(tmp_path, "forward_groups: {mode: roles}\n", star=star))
    assert grant.groups == ("vgate:admin", "vgate:view")


def test_problems_name_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "a.yaml").write_text(RULES + "forward_groups: {mode: all}\n")
    (folder / "b.yaml").write_text("tenant: t1\nroles: {}\nforward_groups: {mode: referenced}\n")
    (folder / "c.yaml").write_text(
        "tenant: t2\nroles: {}\nforward_groups: {mode: some}\n"
        'forward_directory_groups: {match: "x"}\n'
    )
    (folder / "d.yaml").write_text("tenant: t3\nroles: {}\nforward_groups: {match: '(a'}\n")
    _, problems = load_policies(folder, ["t1", "t2", "t3"])
    text = "\n".join(str(p) for p in problems)
    assert "b.yaml:3" in text and "already set at" in text and "a.yaml:5" in text
    assert "c.yaml" in text and "mode" in text
    assert "d.yaml:3" in text and "not a regular expression" in text
    (folder / "b.yaml").unlink()
    (folder / "d.yaml").unlink()
    (folder / "c.yaml").write_text(
        "tenant: t2\nroles: {}\nforward_groups: {mode: all}\n"
        'forward_directory_groups: {match: "x"}\n'
    )
    _, problems = load_policies(folder, ["t1", "t2"])
    assert any("use forward_groups only" in str(p) for p in problems)


def test_group_count_cap_is_too_large_naming_the_limit(tmp_path: Path) -> None:
    eng = engine(tmp_path, "forward_groups: {mode: all}\n", caps=Impersonation(max_groups=5))
    decision = eng.decide(ident(*USER_GROUPS), "t1")
    assert isinstance(decision, TooLarge)
    assert "7 groups, more than impersonation.max_groups (5)" in decision.message
    assert "t1" in decision.message and "forward_groups" in decision.message


def test_header_bytes_cap_is_too_large_naming_the_limit(tmp_path: Path) -> None:
    many = tuple(f"oidc:team-{i:04d}-" + "x" * 60 for i in range(40))
    eng = engine(
        tmp_path, "forward_groups: {mode: all}\n", caps=Impersonation(max_header_bytes=2048)
    )
    decision = eng.decide(ident("oidc:developers", *many), "t1")
    assert isinstance(decision, TooLarge)
    assert "impersonation.max_header_bytes (2048)" in decision.message
    # referenced keeps the same user well under it
    scoped = engine(
        tmp_path, "forward_groups: {mode: referenced}\n", caps=Impersonation(max_header_bytes=2048)
    )
    grant = scoped.decide(ident("oidc:developers", *many), "t1")
    assert isinstance(grant, Grant) and grant.dropped_groups == 40


# -- through a gateway -------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("scoping")
    config = crafted_config(
        d,
        issuer.issuer,
        upstream.port,
        ("scoped", "everything"),
        {
            f"{tenant}.yaml": {
                "tenant": tenant,
                "roles": {"view": {"groups": ["developers"]}},
                "forward_groups": {"mode": mode},
            }
            for tenant, mode in (("scoped", "referenced"), ("everything", "all"))
        },
        impersonation={"max_groups": 50},
    )
    with GatewayThread(d, config) as gw:
        yield gw


def test_only_referenced_groups_reach_the_tenant_and_the_audit_counts_the_rest(
    gateway: GatewayThread, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> None:
    groups = ["developers", *(f"ad-sync-{i}" for i in range(300))]
    token = issuer.sign(issuer.claims(email="big@example.com", groups=groups))
    upstream.heads.clear()
    r = httpx.get(
        f"{gateway.url}/clusters/scoped/api/v1/pods", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200
    sent = [
        line
        for line in upstream.heads[-1].split(b"\r\n")
        if line.lower().startswith(b"impersonate-group")
    ]
    assert sent == [b"Impersonate-Group: vgate:view", b"Impersonate-Group: developers"]
    time.sleep(0.4)
    line = next(
        json.loads(x)
        for x in Path(gateway.config.audit.file).read_text().splitlines()
        if r.headers["audit-id"] in x
    )
    assert line["groups_dropped"] == 300 and line["groups"] == ["vgate:view", "developers"]


def test_too_many_groups_is_431_naming_the_limit(
    gateway: GatewayThread, issuer: CraftingIssuer
) -> None:
    groups = ["developers", *(f"ad-sync-{i}" for i in range(300))]
    token = issuer.sign(issuer.claims(email="big@example.com", groups=groups))
    r = httpx.get(
        f"{gateway.url}/clusters/everything/api/v1/pods",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 431
    status = r.json()
    assert status["kind"] == "Status" and status["code"] == 431
    assert "impersonation.max_groups (50)" in status["message"]
    assert "302 groups" in status["message"]
