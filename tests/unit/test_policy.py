"""Unit and negative tests for step 4: policy files → `PolicyEngine` decisions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.identity import Deny, Grant, Identity
from gateway.policy import PolicyEngine, load_policies

ISSUER = "https://idp.example.com"


def ident(username: str = "oidc:alice@example.com", groups: tuple[str, ...] = ()) -> Identity:
    return Identity(username=username, uid="u-1", groups=groups, issuer=ISSUER, expires_at=9e9)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def engine_from(tmp_path: Path, files: dict[str, str], tenants=None) -> PolicyEngine:
    for name, text in files.items():
        write(tmp_path / "policies", name, text)
    loaded, problems = load_policies(tmp_path / "policies", known_tenants=tenants)
    assert problems == []
    return PolicyEngine(loaded)


TENANT1 = """\
tenant: tenant1
roles:
  cluster-admin: {groups: ["oidc:tenant1-admins"]}
  view:
    groups: ["oidc:developers"]
    users: ["oidc:auditor@example.com"]
"""


# -- decisions -----------------------------------------------------------------------------


def test_deny_by_default_empty_engine() -> None:
    decision = PolicyEngine([]).decide(ident(groups=("oidc:developers",)), "tenant1")
    assert isinstance(decision, Deny)
    assert decision.tenant == "tenant1"


def test_deny_when_nothing_matches(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    decision = engine.decide(ident(groups=("oidc:other", "developers")), "tenant1")
    assert isinstance(decision, Deny)
    assert "tenant1" in decision.reason
    assert "oidc:alice@example.com" in decision.reason


def test_rules_of_one_tenant_do_not_apply_to_another(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    decision = engine.decide(ident(groups=("oidc:tenant1-admins",)), "tenant2")
    assert decision == Deny("tenant2", decision.reason)


def test_group_match(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    grant = engine.decide(ident(groups=("oidc:x", "oidc:developers")), "tenant1")
    assert isinstance(grant, Grant)
    assert grant.tenant == "tenant1"
    assert grant.user == "oidc:alice@example.com"
    assert grant.uid == "u-1"
    assert grant.roles == ("view",)
    assert grant.groups == ("vgate:view",)
    assert grant.extra == ()  # no extras: each would cost the tenant's API server per request
    assert len(grant.reasons) == 1
    assert re.fullmatch(r"view: group oidc:developers \(.*t1\.yaml:4\)", grant.reasons[0])


def test_group_match_is_exact_not_prefix_or_case(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    for groups in [
        ("oidc:developers2",),
        ("oidc:Developers",),
        ("developers",),
        ("oidc:developers ",),
    ]:
        assert isinstance(engine.decide(ident(groups=groups), "tenant1"), Deny), groups


def test_user_match(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    grant = engine.decide(ident("oidc:auditor@example.com"), "tenant1")
    assert isinstance(grant, Grant)
    assert grant.groups == ("vgate:view",)
    assert grant.user == "oidc:auditor@example.com"
    # A group that happens to equal the username does not count as the user.
    assert isinstance(
        engine.decide(ident("oidc:bob", groups=("oidc:auditor@example.com",)), "tenant1"), Deny
    )


def test_several_roles_become_sorted_role_groups(tmp_path: Path) -> None:
    engine = engine_from(
        tmp_path,
        {
            "t1.yaml": TENANT1,
            "t1-more.yaml": "tenant: tenant1\nroles:\n  edit: {users: [oidc:alice@example.com]}\n"
            "  admin: {groups: [oidc:developers]}\n",
        },
    )
    grant = engine.decide(ident(groups=("oidc:tenant1-admins", "oidc:developers")), "tenant1")
    assert isinstance(grant, Grant)
    assert grant.roles == ("admin", "cluster-admin", "edit", "view")
    assert grant.groups == (
        "vgate:admin",
        "vgate:cluster-admin",
        "vgate:edit",
        "vgate:view",
    )
    assert len(grant.reasons) == 4


def test_wildcard_tenant_applies_everywhere(tmp_path: Path) -> None:
    engine = engine_from(
        tmp_path,
        {
            "all.yaml": 'tenant: "*"\nroles:\n  view: {groups: [oidc:auditors]}\n',
            "t1.yaml": TENANT1,
        },
    )
    for tenant in ("tenant1", "tenant2", "anything"):
        grant = engine.decide(ident(groups=("oidc:auditors",)), tenant)
        assert isinstance(grant, Grant), tenant
        assert grant.tenant == tenant
        assert grant.groups == ("vgate:view",)
        assert grant.extra == ()
    # the wildcard merges with the tenant's own rules, roles not duplicated
    grant = engine.decide(ident(groups=("oidc:auditors", "oidc:tenant1-admins")), "tenant1")
    assert grant.groups == ("vgate:cluster-admin", "vgate:view")


def test_deny_reason_is_for_the_audit_log_only(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    decision = engine.decide(ident("oidc:mallory"), "tenant1")
    assert isinstance(decision, Deny)
    assert decision.reason == "no role for oidc:mallory on tenant tenant1"
    # the policy internals (groups, files) are not in it
    assert "tenant1-admins" not in decision.reason
    assert ".yaml" not in decision.reason


# -- loader problems carry file:line -------------------------------------------------------


def _problems(tmp_path: Path, files: dict[str, str], tenants=("tenant1", "tenant2")):
    for name, text in files.items():
        write(tmp_path / "policies", name, text)
    return load_policies(tmp_path / "policies", known_tenants=tenants)


def test_valid_policies_load_without_problems(tmp_path: Path) -> None:
    loaded, problems = _problems(
        tmp_path, {"t1.yaml": TENANT1, "t2.yml": "tenant: tenant2\nroles: {view: {users: [u]}}\n"}
    )
    assert problems == []
    assert sorted(p.policy.tenant for p in loaded) == ["tenant1", "tenant2"]


def test_unknown_field_has_file_and_line(tmp_path: Path) -> None:
    loaded, problems = _problems(
        tmp_path,
        {
            "t1.yaml": "tenant: tenant1\nroles:\n  view:\n    groups: [a]\n    grups: [b]\n",
        },
    )
    assert loaded == []
    assert len(problems) == 1
    p = problems[0]
    assert p.file == str(tmp_path / "policies" / "t1.yaml")
    assert p.line == 5
    assert "unknown field" in str(p)
    assert str(p).startswith(f"{tmp_path / 'policies' / 't1.yaml'}:5: roles.view.grups")


def test_unknown_top_level_field(tmp_path: Path) -> None:
    _, problems = _problems(tmp_path, {"t1.yaml": "tenant: tenant1\nroles: {}\nowner: me\n"})
    assert [(p.line, p.where, p.message) for p in problems] == [(3, "owner", "unknown field")]


def test_bad_role_name_has_file_and_line(tmp_path: Path) -> None:
    _, problems = _problems(
        tmp_path,
        {
            "t1.yaml": "tenant: tenant1\nroles:\n  view: {groups: [a]}\n"
            "  Cluster_Admin: {groups: [b]}\n",
        },
    )
    assert len(problems) == 1
    p = problems[0]
    assert p.file.endswith("t1.yaml")
    assert p.line in (2, 4)  # the roles mapping or the offending key
    assert "Cluster_Admin" in p.message


def test_duplicate_role_across_files(tmp_path: Path) -> None:
    _, problems = _problems(
        tmp_path,
        {
            "a.yaml": "tenant: tenant1\nroles:\n  view: {groups: [a]}\n",
            "b.yaml": "tenant: tenant1\nroles:\n  edit: {groups: [c]}\n  view: {groups: [b]}\n",
        },
    )
    assert len(problems) == 1
    p = problems[0]
    assert (p.file, p.line) == (str(tmp_path / "policies" / "b.yaml"), 4)
    assert f"{tmp_path / 'policies' / 'a.yaml'}:3" in p.message


def test_same_role_for_different_tenants_is_fine(tmp_path: Path) -> None:
    _, problems = _problems(
        tmp_path,
        {
            "a.yaml": "tenant: tenant1\nroles:\n  view: {groups: [a]}\n",
            "b.yaml": "tenant: tenant2\nroles:\n  view: {groups: [a]}\n",
        },
    )
    assert problems == []


def test_unknown_tenant(tmp_path: Path) -> None:
    _, problems = _problems(
        tmp_path,
        {
            "x.yaml": "# comment\ntenant: tenant9\nroles:\n  view: {groups: [a]}\n",
        },
    )
    assert [(Path(p.file).name, p.line) for p in problems] == [("x.yaml", 2)]
    assert "tenant9" in problems[0].message


def test_wildcard_tenant_is_never_unknown(tmp_path: Path) -> None:
    _, problems = _problems(tmp_path, {"x.yaml": 'tenant: "*"\nroles: {view: {users: [u]}}\n'})
    assert problems == []


@pytest.mark.parametrize("tenant", ["Tenant1", "tenant_1", "*x", ""])
def test_bad_tenant_name(tmp_path: Path, tenant: str) -> None:
    _, problems = _problems(tmp_path, {"x.yaml": f'roles: {{}}\ntenant: "{tenant}"\n'})
    assert [(p.line, p.where) for p in problems] == [(2, "tenant")]


def test_invalid_yaml_has_file_and_line(tmp_path: Path) -> None:
    loaded, problems = _problems(
        tmp_path,
        {
            "bad.yaml": "tenant: tenant1\nroles:\n  view: {groups: [a\n  edit: x\n",
            "good.yaml": TENANT1,
        },
    )
    assert [p.policy.tenant for p in loaded] == ["tenant1"]  # the good file still loads
    assert len(problems) == 1
    text = str(problems[0])
    assert re.search(
        re.escape(str(tmp_path / "policies" / "bad.yaml")) + r":\d+: invalid YAML", text
    ), text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tenant: tenant1\nroles:\n  view: {groups: [a, a]}\n", "listed twice"),
        ('tenant: tenant1\nroles:\n  view: {groups: ["a\\r\\nb"]}\n', "not a usable name"),
        ('tenant: tenant1\nroles:\n  view: {users: [""]}\n', "not a usable name"),
        ("tenant: tenant1\nroles:\n  view: {groups: oidc:admins}\n", ""),
    ],
)
def test_bad_names_in_rules(tmp_path: Path, text: str, fragment: str) -> None:
    loaded, problems = _problems(tmp_path, {"x.yaml": text})
    assert loaded == []
    assert len(problems) == 1
    assert problems[0].line == 3
    assert fragment in problems[0].message


def test_duplicate_role_key_in_one_file_is_reported(tmp_path: Path) -> None:
    _, problems = _problems(
        tmp_path,
        {
            "t1.yaml": "tenant: tenant1\nroles:\n  view: {groups: [a]}\n  view: {groups: [b]}\n",
        },
    )
    assert [p.line for p in problems] == [4]


def test_empty_policy_file_is_ignored(tmp_path: Path) -> None:
    loaded, problems = _problems(tmp_path, {"empty.yaml": "# nothing here\n"})
    assert (loaded, problems) == ([], [])


# -- remembered decisions ------------------------------------------------------------------


def test_repeat_decision_is_the_same_grant_object(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    alice = ident(groups=("oidc:developers",))
    first = engine.decide(alice, "tenant1")
    assert isinstance(first, Grant)
    assert engine.decide(alice, "tenant1") is first
    # another tenant, another identity object: decided on their own
    assert isinstance(engine.decide(alice, "tenant2"), Deny)
    admin = ident(groups=("oidc:tenant1-admins",))
    assert engine.decide(admin, "tenant1").roles == ("cluster-admin",)
    assert engine.decide(alice, "tenant1") is first


def test_equal_identities_are_decided_alike_and_unequal_ones_apart(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    for _ in range(3):  # fresh objects each time (as after a token-cache miss)
        assert isinstance(engine.decide(ident(groups=("oidc:developers",)), "tenant1"), Grant)
        assert isinstance(engine.decide(ident(groups=("oidc:other",)), "tenant1"), Deny)


def test_a_users_next_token_gets_the_same_grant_object(tmp_path: Path) -> None:
    """A new `Identity` object with the same name, uid, groups and issuer (the user's next
    token: another `expires_at`) is decided alike by value: the same `Grant` object. Any
    difference that matters gives a decision of its own, and a policy change forgets."""
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})

    def alice(expires_at: float, **changed: object) -> Identity:
        fields: dict = {
            "username": "oidc:alice@example.com",
            "uid": "u-1",
            "groups": ("oidc:developers",),
            "issuer": ISSUER,
            "expires_at": expires_at,
        }
        return Identity(**{**fields, **changed})

    first = engine.decide(alice(1e9), "tenant1")
    assert isinstance(first, Grant)
    assert engine.decide(alice(2e9), "tenant1") is first
    assert engine.decide(alice(2e9, uid="u-2"), "tenant1").uid == "u-2"
    assert isinstance(engine.decide(alice(2e9, groups=("oidc:other",)), "tenant1"), Deny)
    other_issuer = engine.decide(alice(2e9, issuer="https://other.example.com"), "tenant1")
    assert other_issuer is not first
    engine.replace(load_policies(tmp_path / "policies")[0])
    again = engine.decide(alice(3e9), "tenant1")
    assert again == first and again is not first


def test_stored_roles_change_forgets_remembered_decisions(tmp_path: Path) -> None:
    engine = engine_from(tmp_path, {"t1.yaml": TENANT1})
    bob = ident("oidc:bob@example.com", groups=("oidc:ops",))
    assert isinstance(engine.decide(bob, "managed"), Deny)
    engine.set_stored_roles("managed", {"admin": ["oidc:ops"]})
    grant = engine.decide(bob, "managed")
    assert isinstance(grant, Grant) and grant.roles == ("admin",)
    engine.set_stored_roles("managed", None)
    assert isinstance(engine.decide(bob, "managed"), Deny)
