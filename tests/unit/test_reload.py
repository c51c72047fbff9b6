"""Live configuration, unit level: the policy engine swaps rules and forgets what it
remembered (stored roles stay), the files are watched through ConfigMap-style `..data`
swaps, a change is validated before it is used, and `LiveConfig` swaps, counts and logs."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import yaml

from gateway.config import load_config
from gateway.directory.entry import DirectoryGroup, membership
from gateway.identity import Deny, Grant, Identity
from gateway.metrics import Metrics
from gateway.policy import PolicyEngine, load_policies
from gateway.reload import ConfigSource, LiveConfig, Refused, Snapshot, Tracked, first_load
from gateway.rewrite import impersonation_block
from tests.support.configmap import ConfigMapDir

ALICE = Identity("oidc:alice", "u1", ("oidc:ops",), "https://idp", 9e9)


def policy(tenant: str = "t1", **roles: list[str]) -> str:
    return yaml.safe_dump({"tenant": tenant, "roles": {r: {"groups": g} for r, g in roles.items()}})


def loaded(directory: Path):
    policies, problems = load_policies(directory)
    assert problems == []
    return policies


# -- the engine ---------------------------------------------------------------------------


def test_replace_forgets_remembered_decisions_and_keeps_stored_roles(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "t1.yaml").write_text(policy(admin=["oidc:ops"], view=["oidc:ops"]))
    engine = PolicyEngine(loaded(tmp_path / "p"))
    engine.set_stored_roles("t2", {"edit": ["oidc:ops"]})  # the lifecycle manager's roles
    before = engine.decide(ALICE, "t1")
    assert isinstance(before, Grant) and before.roles == ("admin", "view")
    assert engine.decide(ALICE, "t1") is before  # remembered
    (tmp_path / "p" / "t1.yaml").write_text(policy(view=["oidc:ops"]))
    engine.replace(loaded(tmp_path / "p"))
    after = engine.decide(ALICE, "t1")  # the same identity object: not the old answer
    assert isinstance(after, Grant) and after.roles == ("view",)
    assert b"vgate:admin" in impersonation_block(before)
    assert b"vgate:admin" not in impersonation_block(after)
    stored = engine.decide(ALICE, "t2")
    assert isinstance(stored, Grant) and stored.roles == ("edit",)
    assert engine.generation == 2
    engine.replace([])
    assert isinstance(engine.decide(ALICE, "t1"), Deny)
    assert isinstance(engine.decide(ALICE, "t2"), Grant)


def test_replace_forgets_forwarded_directory_groups_kept_with_the_membership(
    tmp_path: Path,
) -> None:
    team = "CN=team-a,OU=Groups,DC=corp,DC=example,DC=com"
    member = membership(
        "alice@corp",
        dn="CN=alice,DC=corp,DC=example,DC=com",
        sid="S-1-5-1",
        guid=None,
        disabled=False,
        locked=False,
        method="test",
        groups=[DirectoryGroup("S-1-5-21-1-2-3-4", team, "team-a")],
    )
    (tmp_path / "p").mkdir()
    doc = {
        "tenant": "t1",
        "roles": {"view": {"groups": ["oidc:ops"]}},
        "forward_directory_groups": {"match": "^CN=team-"},
    }
    (tmp_path / "p" / "t1.yaml").write_text(yaml.safe_dump(doc))
    engine = PolicyEngine(loaded(tmp_path / "p"))
    first = engine.decide(ALICE, "t1", member)
    assert isinstance(first, Grant) and any(g.startswith("ad:") for g in first.groups)
    doc["forward_directory_groups"] = {"match": "^CN=other-"}
    (tmp_path / "p" / "t1.yaml").write_text(yaml.safe_dump(doc))
    engine.replace(loaded(tmp_path / "p"))
    second = engine.decide(ALICE, "t1", member)  # the same cached Membership object
    assert isinstance(second, Grant) and not any(g.startswith("ad:") for g in second.groups)


# -- the files ----------------------------------------------------------------------------


def config_file(tmp_path: Path, policies: Path, **extra) -> Path:
    (tmp_path / "token").write_text("t\n")
    doc = {
        "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["v"]}]},
        "policies": str(policies),
        "tenants": [
            {"name": "t1", "upstream": "https://10.0.0.1", "token_file": str(tmp_path / "token")}
        ],
        **extra,
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(tmp_path: Path) -> tuple[ConfigMapDir, Path, Tracked]:
    cm = ConfigMapDir(tmp_path / "policies")
    cm.publish({"t1.yaml": policy(admin=["oidc:ops"])})
    path = config_file(tmp_path, cm.root)
    source = ConfigSource(path)
    return cm, path, Tracked(first_load(load_config(path), path), source)


def test_a_configmap_swap_is_a_change_and_a_half_done_swap_reads_without_the_dangling_link(
    tmp_path: Path,
) -> None:
    cm, _, tracked = start(tmp_path)
    assert tracked.look() is None  # nothing changed
    cm.publish({"t1.yaml": policy(view=["oidc:ops"]), "old.yaml": policy("t2", view=["x"])})
    new = tracked.look()
    assert isinstance(new, Snapshot) and len(new.policies) == 2
    assert tracked.take(new) is not None and tracked.generation == 2
    cm.publish({"t1.yaml": policy(view=["oidc:ops"])}, finish=False)  # old.yaml dangles
    assert (cm.root / "old.yaml").is_symlink() and not (cm.root / "old.yaml").exists()
    half = tracked.look()
    assert isinstance(half, Snapshot) and [Path(p.file).name for p in half.policies] == ["t1.yaml"]


def test_an_edit_in_place_is_a_change_and_touching_is_not_a_new_generation(tmp_path: Path) -> None:
    cm, _, tracked = start(tmp_path)
    target = cm.root / "t1.yaml"
    os.utime(target, ns=(1, 1))  # touched: read again, says the same
    same = tracked.look()
    assert isinstance(same, Snapshot) and tracked.take(same) is None
    assert tracked.generation == 1 and tracked.look() is None
    target.write_text(policy(view=["oidc:ops"]))
    assert isinstance(tracked.look(), Snapshot)


def test_a_broken_file_is_refused_with_its_location_and_not_read_again_until_it_changes(
    tmp_path: Path,
) -> None:
    cm, _, tracked = start(tmp_path)
    (cm.root / "t1.yaml").write_text("tenant: t1\nroles: [\n")
    refused = tracked.look()
    assert isinstance(refused, Refused)
    assert "t1.yaml:" in refused.problem and "\n" not in refused.problem
    tracked.take(refused)
    assert tracked.look() is None  # the same broken files: no second read, no second log
    assert tracked.current.policies[0].policy.roles.keys() == {"admin"}  # last good kept


def test_config_changes_outside_the_live_sections_are_named_and_not_used(tmp_path: Path) -> None:
    cm, _, tracked = start(tmp_path)
    config_file(
        tmp_path,
        cm.root,
        listen={"port": 9999},
        tenants=[
            {"name": "t9", "upstream": "https://10.0.0.9", "token_file": str(tmp_path / "token")}
        ],
    )
    new = tracked.look()
    assert isinstance(new, Snapshot)
    assert new.restart_needed == ("listen",)
    assert new.config.listen.port == 8443  # the running value stays
    assert [t.name for t in new.config.tenants] == ["t9"] and set(new.upstreams) == {"t9"}


def test_a_policy_edit_does_not_read_the_config_file_again(tmp_path: Path, monkeypatch) -> None:
    """At 10,000 static tenants reading and validating the config file takes 1-2 s of CPU in
    every process (holding the GIL beside the serving loop): a policy edit must not pay it."""
    cm, path, tracked = start(tmp_path)
    import gateway.reload as reload

    reads = []
    real = reload.load_config
    monkeypatch.setattr(reload, "load_config", lambda f: reads.append(f) or real(f))
    cm.publish({"t1.yaml": policy(view=["oidc:ops"])})
    new = tracked.look()
    assert isinstance(new, Snapshot) and new.policies[0].policy.roles.keys() == {"view"}
    assert reads == [] and new.upstreams == {} and new.config is tracked.current.config
    assert tracked.take(new) is not None and tracked.generation == 2
    config_file(
        tmp_path,
        cm.root,
        tenants=[
            {"name": "t9", "upstream": "https://10.0.0.9", "token_file": str(tmp_path / "token")}
        ],
    )
    changed = tracked.look()
    assert reads == [path] and isinstance(changed, Snapshot) and set(changed.upstreams) == {"t9"}
    assert changed.tenants_sha != new.tenants_sha and changed.digest != new.digest
    tracked.take(changed)
    os.utime(path, ns=(1, 1))  # touched, not changed: read, the same digest, no generation
    touched = tracked.look()
    assert isinstance(touched, Snapshot) and touched.digest == changed.digest
    assert tracked.take(touched) is None and tracked.generation == 3


def test_files_changing_while_read_are_read_again_later(tmp_path: Path, monkeypatch) -> None:
    cm, _, tracked = start(tmp_path)
    (cm.root / "t1.yaml").write_text(policy(view=["oidc:ops"]))
    import gateway.reload as reload

    real = reload.load_policies

    def racing(directory):
        result = real(directory)
        cm.publish({"t1.yaml": policy(edit=["oidc:ops"])})  # lands during the read
        return result

    monkeypatch.setattr(reload, "load_policies", racing)
    assert tracked.look() is None
    monkeypatch.setattr(reload, "load_policies", real)
    final = tracked.look()
    assert isinstance(final, Snapshot) and final.policies[0].policy.roles.keys() == {"edit"}


async def test_live_config_swaps_counts_and_logs_once(tmp_path: Path, caplog) -> None:
    cm, _, tracked = start(tmp_path)
    metrics = Metrics()
    swaps: list[tuple[str, str]] = []
    live = LiveConfig(
        tracked,
        lambda old, new: swaps.append((old.digest, new.digest)) or "",
        metrics,
        poll_seconds=0.05,
        who="test",
    )
    live.start()
    caplog.set_level(logging.INFO, logger="vgate.reload")
    try:
        (cm.root / "t1.yaml").write_text("tenant: t1\nroles: [\n")
        await asyncio.sleep(0.4)
        cm.publish({"t1.yaml": policy(view=["oidc:ops"])})
        await asyncio.sleep(0.4)
    finally:
        live.stop()
    refused = [r for r in caplog.records if "not reloaded" in r.getMessage()]
    assert len(refused) == 1  # polled several times, logged once
    assert len(swaps) == 1 and tracked.generation == 2
    sample = metrics.registry.get_sample_value
    assert sample("vgate_config_reload_total", {"result": "error"}) == 1
    assert sample("vgate_config_reload_total", {"result": "ok"}) == 1
    assert sample("vgate_policy_generation") == 2
    assert sample("vgate_policy_hash_info", {"sha256": tracked.current.digest[:16]}) == 1
    assert "generation 2" in live.notes()[0]


def test_a_vanished_policy_directory_is_refused_not_read_as_no_policy(tmp_path: Path) -> None:
    cm, _, tracked = start(tmp_path)
    os.rename(cm.root, tmp_path / "gone")
    refused = tracked.look()
    assert isinstance(refused, Refused) and "not found" in refused.problem
    assert tracked.current.policies  # the last good stays
