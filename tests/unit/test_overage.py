"""Group overage without a directory, and how directory groups are named in its place (the
directory path runs end to end in tests/e2e/directory/test_overage.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.directory.entry import DirectoryGroup, membership
from gateway.directory.overage import claim_groups, with_directory_groups
from gateway.identity import Identity
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, crafted_config
from tests.support.scripted import ScriptedUpstream

SOURCES = {
    "_claim_names": {"groups": "src1"},
    "_claim_sources": {"src1": {"endpoint": "https://graph.example/getMemberObjects"}},
}


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory, issuer: CraftingIssuer, upstream: ScriptedUpstream
) -> Iterator[GatewayThread]:
    d: Path = tmp_path_factory.mktemp("overage")
    config = crafted_config(
        d,
        issuer.issuer,
        upstream.port,
        ("t1",),
        {
            "all.yaml": {
                "tenant": "*",
                "roles": {"view": {"users": ["alice@example.com"], "groups": ["developers"]}},
            }
        },
    )
    with GatewayThread(d, config) as gw:
        yield gw


@pytest.mark.parametrize("marker", [SOURCES, {"hasgroups": True}])
def test_overage_without_a_directory_is_refused_naming_it(
    gateway: GatewayThread, issuer: CraftingIssuer, marker: dict
) -> None:
    # alice would be allowed by name: her groups are unknown, so she is refused anyway
    token = issuer.sign(issuer.claims(groups=None, **marker))
    r = httpx.get(
        f"{gateway.url}/clusters/t1/api/v1/pods", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 403
    status = r.json()
    assert status["kind"] == "Status" and "group overage" in status["message"]
    assert "no directory" in status["message"]


def test_a_claim_source_for_another_claim_is_no_overage(
    gateway: GatewayThread, issuer: CraftingIssuer
) -> None:
    token = issuer.sign(
        issuer.claims(
            _claim_names={"address": "src1"},
            _claim_sources=SOURCES["_claim_sources"],
            hasgroups=False,
        )
    )
    r = httpx.get(
        f"{gateway.url}/clusters/t1/api/v1/pods", headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200


def _member():
    groups = [
        DirectoryGroup("S-1-5-21-1-2-3-1100", "CN=team-web,OU=Groups,DC=corp", "team-web"),
        DirectoryGroup("S-1-5-32-545", None, "S-1-5-32-545"),
        DirectoryGroup("S-1-5-21-1-2-3-1101", "CN=masters,DC=corp", "system:masters"),
    ]
    return membership(
        "erin@corp",
        dn="CN=erin,DC=corp",
        sid="S-1-5-21-1-2-3-9",
        guid=None,
        disabled=False,
        locked=False,
        groups=groups,
        method="test",
    )


def test_directory_groups_are_named_as_the_idp_would_have() -> None:
    member = _member()
    assert claim_groups(member, "name", "oidc:") == (
        "oidc:team-web",
        "oidc:S-1-5-32-545",
        "oidc:system:masters",
    )
    # without a prefix, a name would be system:masters: never emitted (as from the IdP)
    assert claim_groups(member, "name", "") == ("team-web", "S-1-5-32-545")
    assert claim_groups(member, "sid", "") == (
        "S-1-5-21-1-2-3-1100",
        "S-1-5-32-545",
        "S-1-5-21-1-2-3-1101",
    )
    assert claim_groups(member, "dn", "ad:") == (
        "ad:CN=team-web,OU=Groups,DC=corp",
        "ad:CN=masters,DC=corp",
    )


def test_the_completed_identity_is_the_same_object_for_the_same_answer() -> None:
    member = _member()
    identity = Identity(
        "oidc:erin", "e", ("oidc:token-group",), "https://idp", 9e9, groups_overage=True
    )
    first = with_directory_groups(identity, member, "name", "oidc:")
    assert first.groups == (
        "oidc:token-group",
        "oidc:team-web",
        "oidc:S-1-5-32-545",
        "oidc:system:masters",
    )
    assert with_directory_groups(identity, member, "name", "oidc:") is first
    assert first.groups_overage and first.username == identity.username
