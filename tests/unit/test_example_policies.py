"""The example policies shipped in `policies/`: accepted by `vgate check-config`, described
by `policies/schema.json` (which must match the code), and deciding what their comments say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from gateway.identity import Deny, Grant, Identity
from gateway.policy import PolicyEngine, load_policies
from gateway.policy.model import policy_schema

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"
EXAMPLES = sorted(POLICIES.glob("*.yaml"))


def _vgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_there_are_examples_for_each_documented_case() -> None:
    assert {p.name for p in EXAMPLES} == {"platform-admins.yaml", "team-a.yaml", "team-b.yaml"}


def _config(tmp_path: Path, policies: Path, tenants: tuple[str, ...]) -> Path:
    (tmp_path / "tenant.token").write_text("credential\n")
    config = tmp_path / "vgate.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "oidc": {
                    "issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]
                },
                "policies": str(policies),
                "tenants": [
                    {
                        "name": name,
                        "upstream": f"https://{name}.example.com:6443",
                        "token_file": "tenant.token",
                    }
                    for name in tenants
                ],
            }
        )
    )
    return config


def test_check_config_accepts_the_examples(tmp_path: Path) -> None:
    config = _config(tmp_path, POLICIES, ("team-a", "team-b"))
    done = _vgate("check-config", "--config", str(config))
    assert done.returncode == 0, done.stderr


def test_check_config_names_the_file_and_line_of_a_broken_copy(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    text = (POLICIES / "team-b.yaml").read_text().replace("  view:", "  view typo:")
    (folder / "team-b.yaml").write_text(text)
    config = _config(tmp_path, folder, ("team-b",))
    done = _vgate("check-config", "--config", str(config))
    assert done.returncode == 1
    line = text.splitlines().index("  view typo:") + 1
    assert f"team-b.yaml:{line}" in done.stderr and "view typo" in done.stderr


def test_schema_file_is_what_the_code_accepts() -> None:
    assert json.loads((POLICIES / "schema.json").read_text()) == policy_schema(), (
        "policies/schema.json is stale: python -m gateway policy schema > policies/schema.json"
    )
    done = _vgate("policy", "schema")
    assert done.returncode == 0 and json.loads(done.stdout) == policy_schema()


def test_examples_validate_against_the_schema() -> None:
    schema = policy_schema()
    for path in EXAMPLES:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = {"tenant": "team-a", "roles": {"view": {"group": ["oops"]}}}
    try:
        jsonschema.validate(bad, schema)
    except jsonschema.ValidationError as exc:
        assert "group" in exc.message
    else:
        raise AssertionError("a misspelt field passed the schema")


def _who(user: str, *groups: str) -> Identity:
    return Identity(
        f"oidc:{user}", user, tuple(f"oidc:{g}" for g in groups), "https://idp.example.com", 2e9
    )


def test_examples_decide_what_their_comments_say() -> None:
    policies, problems = load_policies(POLICIES)
    assert not problems
    engine = PolicyEngine(policies)

    def roles(identity: Identity, tenant: str) -> tuple[str, ...]:
        decision = engine.decide(identity, tenant)
        return () if isinstance(decision, Deny) else decision.roles

    platform = _who("pat@example.com", "platform-admins")
    assert roles(platform, "team-a") == roles(platform, "team-b") == ("cluster-admin",)
    assert roles(platform, "any-new-tenant") == ("cluster-admin",)
    dev_a = _who("ann@example.com", "team-a-developers")
    assert roles(dev_a, "team-a") == ("view",) and roles(dev_a, "team-b") == ()
    lead_b = _who("ben@example.com", "team-b-leads", "team-b")
    assert roles(lead_b, "team-b") == ("admin", "view") and roles(lead_b, "team-a") == ()
    auditor = _who("auditor@example.com")
    grant = engine.decide(auditor, "team-b")
    assert isinstance(grant, Grant) and grant.groups == ("vgate:view",)
    assert isinstance(engine.decide(_who("eve@example.com", "team-b-leads-x"), "team-b"), Deny)
