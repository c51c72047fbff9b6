"""Policies that name directory groups: decisions, forwarded groups, check-config problems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.directory.entry import DirectoryGroup, membership, not_found
from gateway.identity import Deny, Grant, Identity
from gateway.policy import PolicyEngine, load_policies
from gateway.policy.engine import forwarded_name
from gateway.policy.model import WELL_KNOWN_ROLES

REPO = Path(__file__).resolve().parents[3]
BASE = "DC=corp,DC=example,DC=com"
ADMINS = f"CN=k8s-tenant1-admins,OU=Groups,{BASE}"
VIEW_SID = "S-1-5-21-1-2-3-1108"

POLICY = f"""\
tenant: tenant1
roles:
  cluster-admin: {{directory_groups: ["cn=K8S-tenant1-admins, ou=groups,{BASE.lower()}"]}}
  view:
    directory_groups: ["{VIEW_SID}"]
    groups: ["oidc:auditors"]
forward_directory_groups: {{match: "^CN=team-"}}
"""


def ident(groups: tuple[str, ...] = ()) -> Identity:
    return Identity("oidc:alice@corp.example.com", "u1", groups, "https://idp", 9e9)


def member_of(*groups: tuple[str, str | None], disabled: bool = False, locked: bool = False):
    return membership(
        "alice@corp.example.com",
        dn=f"CN=alice,{BASE}",
        sid="S-1-5-21-1-2-3-9",
        guid=None,
        disabled=disabled,
        locked=locked,
        method="test",
        groups=[DirectoryGroup(sid, dn, dn or sid) for sid, dn in groups],
    )


def engine(tmp_path: Path, text: str = POLICY) -> PolicyEngine:
    (tmp_path / "p").mkdir(exist_ok=True)
    (tmp_path / "p" / "t1.yaml").write_text(text)
    loaded, problems = load_policies(tmp_path / "p", ["tenant1"], WELL_KNOWN_ROLES)
    assert problems == []
    return PolicyEngine(loaded)


def test_dn_matches_case_and_space_insensitively(tmp_path: Path) -> None:
    grant = engine(tmp_path).decide(ident(), "tenant1", member_of(("S-1-5-21-1-2-3-7", ADMINS)))
    assert isinstance(grant, Grant)
    assert grant.roles == ("cluster-admin",) and grant.groups == ("vgate:cluster-admin",)
    assert grant.directory_groups == (("cluster-admin", ADMINS),)
    assert "t1.yaml:3" in grant.reasons[0]


def test_sid_matches(tmp_path: Path) -> None:
    grant = engine(tmp_path).decide(ident(), "tenant1", member_of((VIEW_SID, None)))
    assert isinstance(grant, Grant) and grant.roles == ("view",)
    assert grant.directory_groups == (("view", VIEW_SID),)


def test_old_signature_still_works(tmp_path: Path) -> None:
    grant = engine(tmp_path).decide(ident(("oidc:auditors",)), "tenant1")
    assert isinstance(grant, Grant) and grant.roles == ("view",)


@pytest.mark.parametrize("state", ["disabled", "locked", "missing"])
def test_inactive_accounts_get_nothing_even_from_token_groups(tmp_path: Path, state: str) -> None:
    if state == "missing":
        m = not_found("alice@corp.example.com")
    else:
        m = member_of(("S-1-5-21-1-2-3-7", ADMINS), **{state: True})
    assert m.groups == ()
    decision = engine(tmp_path).decide(ident(("oidc:auditors",)), "tenant1", m)
    assert isinstance(decision, Deny)
    assert ("not found" if state == "missing" else state) in decision.reason


def test_forwarded_groups_are_filtered_and_safe(tmp_path: Path) -> None:
    m = member_of(
        ("S-1-5-21-1-2-3-7", ADMINS),
        ("S-1-5-21-1-2-3-8", f"CN=team-Web,OU=Groups,{BASE}"),
        ("S-1-5-21-1-2-3-10", f"CN=team-x\r\nImpersonate-User: root,{BASE}"),
        ("S-1-5-21-1-2-3-11", f"CN=team-{'y' * 600},{BASE}"),
        ("S-1-5-21-1-2-3-12", f"CN=other,{BASE}"),
    )
    grant = engine(tmp_path).decide(ident(), "tenant1", m)
    assert isinstance(grant, Grant)
    assert grant.groups == (
        "vgate:cluster-admin",
        "ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com",
    )
    assert forwarded_name("CN=system:masters,DC=x").startswith("ad:")


def vgate_check(tmp_path: Path, policy_text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "t1.yaml").write_text(policy_text)
    (tmp_path / "token").write_text("x\n")
    (tmp_path / "pw").write_text("x\n")
    (tmp_path / "vgate.yaml").write_text(
        yaml.safe_dump(
            {
                "oidc": {
                    "issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]
                },
                "policies": "policies",
                "tenants": [
                    {"name": "tenant1", "upstream": "https://127.0.0.1:6443", "token_file": "token"}
                ],
                "ldap": {
                    "urls": ["ldaps://dc1.corp.example.com"],
                    "bind_dn": f"CN=svc,{BASE}",
                    "bind_password_file": "pw",
                    "user_base_dn": BASE,
                    "group_base_dn": BASE,
                },
            }
        )
    )
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(tmp_path / "vgate.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_accepts_directory_policies(tmp_path: Path) -> None:
    done = vgate_check(tmp_path, POLICY)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (
            "tenant: tenant1\nroles:\n  view:\n    directory_groups:\n      - CN=ok,DC=x\n"
            "      - not-a-dn\n",
            6,
            "not a group DN or SID",
        ),
        (
            "tenant: tenant1\nroles:\n  view:\n    directory_groups: [S-1-5-21-x]\n",
            4,
            "malformed SID",
        ),
        ("tenant: tenant9\nroles:\n  view: {groups: [a]}\n", 1, "unknown tenant"),
        (
            "tenant: tenant1\nroles:\n  view: {groups: [a]}\n  sudo: {groups: [a]}\n",
            4,
            "unknown role 'sudo'",
        ),
        (
            "tenant: tenant1\nroles:\n  view:\n    directory_groups: [CN=a,DC=x, cn=A , dc=X]\n",
            4,
            "listed twice",
        ),
        (
            "tenant: tenant1\nroles: {}\nforward_directory_groups: {match: '(unclosed'}\n",
            3,
            "not a regular expression",
        ),
    ],
)
def test_check_config_reports_policy_problems_with_lines(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    done = vgate_check(tmp_path, text)
    assert done.returncode == 1
    assert f"t1.yaml:{line}" in done.stderr, done.stderr
    assert message in done.stderr


@pytest.mark.parametrize(
    ("ldap", "message"),
    [
        ({"tls": "none"}, "needs ldap:// URLs"),
        ({"tls": "none", "urls": ["ldap://dc1.corp.example.com"]}, "only allowed for a directory"),
        ({"tls": "starttls"}, "needs ldap:// URLs"),
        ({"urls": ["ldaps://dc1/x"]}, "is not ldap://"),
        ({"bind_dn": "svc"}, "not a distinguished name"),
        ({"user_attribute": "cn"}, "userPrincipalName"),
        ({"bind_password_file": "missing"}, "file not found"),
        ({"cache_ttl_seconds": 600, "max_staleness_seconds": 60}, "at least cache_ttl"),
    ],
)
def test_check_config_validates_the_ldap_section(tmp_path: Path, ldap: dict, message: str) -> None:
    vgate_check(tmp_path, POLICY)
    cfg = yaml.safe_load((tmp_path / "vgate.yaml").read_text())
    cfg["ldap"].update(ldap)
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(tmp_path / "vgate.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
