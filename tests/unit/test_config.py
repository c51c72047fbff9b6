"""`load_config` and `vgate check-config`: every problem reported with file:line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from tests.support.config_files import VALID, make_config

ROOT = Path(__file__).resolve().parents[2]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def line_of(text: str, needle: str, nth: int = 1) -> int:
    seen = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            seen += 1
            if seen == nth:
                return number
    raise AssertionError(f"{needle!r} not in config")


def check_config(config: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- load_config ---------------------------------------------------------------------------


def test_valid_config_loads_and_resolves_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(make_config(tmp_path / "conf"))
    assert cfg.policies == tmp_path / "conf" / "policies"
    assert cfg.tenants[0].token_file == tmp_path / "conf" / "secrets" / "tenant1.token"
    assert cfg.oidc.issuers[0].algorithms == ["RS256", "ES256"]
    assert cfg.routing.base_domain == "k8s.example.com"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    token = tmp_path / "elsewhere.token"
    token.write_text("t")
    text = VALID.replace("secrets/tenant1.token", str(token))
    cfg = load_config(make_config(tmp_path / "conf", text))
    assert cfg.tenants[0].token_file == token


@pytest.mark.parametrize(
    ("old", "new", "needle", "fragment"),
    [
        (
            "listen: {host: 127.0.0.1, port: 8443}",
            "listen: {host: 127.0.0.1, port: 8443}\nlisten_adress: x",
            "listen_adress",
            "listen_adress: unknown field",
        ),
        (
            "listen: {host: 127.0.0.1, port: 8443}",
            "listen: {host: 127.0.0.1, port: 8443, trusted_proxies: [10.0.0.0/33]}",
            "trusted_proxies",
            "'10.0.0.0/33' is not an IP address or CIDR range",
        ),
        (
            "      audiences: [vgate]",
            "      audiences: [vgate]\n      audience: vgate",
            "audience: vgate",
            "oidc.issuers.0.audience: unknown field",
        ),
        ("https://idp.example.com", "http://idp.example.com", "http://idp.example.com", "https://"),
        ("https://idp.example.com", "http://127.0.0.1.evil.com", "evil.com", "https://"),
        ("https://idp.example.com", "http://localhost@evil.com", "evil.com", "https://"),
        ("https://idp.example.com", "https://idp.example.com?x=1", "idp.example.com?", "query"),
        ("[RS256, ES256]", "[RS256, HS256]", "HS256", "HS256"),
        ("[RS256, ES256]", "[none]", "[none]", "none"),
        ("[RS256, ES256]", "[RS256, None]", "None", "None"),
        ("[RS256, ES256]", "[]", "algorithms: []", "at least 1"),
        ("  - name: tenant1", "  - name: Tenant_1", "Tenant_1", "DNS label"),
        ("https://10.0.0.10:443", "https://10.0.0.10:443/api", "10.0.0.10:443/api", "no path"),
        (
            "    token_file: secrets/tenant1.token",
            "    insecure_skip_tls_verify: true",
            "name: tenant1",
            "token_file",
        ),
        (
            "  base_domain: k8s.example.com",
            "  base_domain: k8s..example.com",
            "base_domain",
            "DNS name",
        ),
        ("  path_prefix: /clusters", "  path_prefix: /clusters/../x", "path_prefix", "/clusters"),
        ("port: 8443}", "port: 99999}", "listen:", "65535"),
        (
            "policies: policies",
            "policies: policies\nsessions:\n  recording:\n    mode: always",
            "mode: always",
            "sessions.recording.mode: Input should be 'off', 'best-effort' or 'required'",
        ),
        (
            "policies: policies",
            "policies: policies\nsessions:\n  recording:\n    tenants:\n"
            "      Bad_Tenant: {mode: required}",
            "    tenants:",
            "not a tenant name: 'Bad_Tenant'",
        ),
        (
            "policies: policies",
            "policies: policies\nsessions:\n  recording:\n    roles:\n"
            "      view: {stdin: sometimes}",
            "sometimes",
            "sessions.recording.roles.view.stdin",
        ),
    ],
)
def test_each_problem_is_located(
    tmp_path: Path, old: str, new: str, needle: str, fragment: str
) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    path = make_config(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line_of(text, needle)}: "), problems
    assert fragment in problems[0]


def test_duplicate_tenant_is_reported(tmp_path: Path) -> None:
    text = (
        VALID + "  - name: tenant1\n    upstream: https://10.0.0.11:443\n"
        "    token_file: secrets/tenant1.token\n"
    )
    path = make_config(tmp_path, text)
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:")
    assert "tenant listed twice: tenant1" in problems[0]


def test_duplicate_tenant_points_at_the_duplicate(tmp_path: Path) -> None:
    text = (
        VALID + "  - name: tenant1\n    upstream: https://10.0.0.11:443\n"
        "    token_file: secrets/tenant1.token\n"
    )
    path = make_config(tmp_path, text)
    (problem,) = problems_of(path)
    assert problem.startswith(f"{path}:{line_of(text, 'name: tenant1', nth=2)}: ")


def test_duplicate_issuer_is_reported(tmp_path: Path) -> None:
    text = VALID.replace(
        "policies: policies",
        "    - issuer: https://idp.example.com\n      audiences: [other]\npolicies: policies",
    )
    problems = problems_of(make_config(tmp_path, text))
    assert len(problems) == 1
    assert "issuer listed twice: https://idp.example.com" in problems[0]


def test_missing_files_are_located(tmp_path: Path) -> None:
    text = VALID.replace("secrets/tenant1.token", "secrets/nope.token").replace(
        "policies: policies", "policies: no-policies"
    )
    path = make_config(tmp_path, text)
    problems = problems_of(path)
    assert sorted(problems) == sorted(
        [
            f"{path}:{line_of(text, 'no-policies')}: policies: policy directory not found: "
            f"{tmp_path / 'no-policies'}",
            f"{path}:{line_of(text, 'nope.token')}: tenants.0.token_file: file not found: "
            f"{tmp_path / 'secrets' / 'nope.token'}",
        ]
    )


def test_relative_paths_resolve_against_config_folder_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_config(tmp_path / "conf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "conf" / "vgate.yaml")
    assert cfg.tenants[0].token_file.resolve() == (tmp_path / "conf" / "secrets" / "tenant1.token")
    # a token file that only exists relative to the cwd does not count
    (elsewhere / "secrets").mkdir()
    (elsewhere / "secrets" / "only-here.token").write_text("t")
    path.write_text(VALID.replace("tenant1.token", "only-here.token"))
    assert any("file not found" in p for p in problems_of(path))


def test_invalid_yaml_is_located(tmp_path: Path) -> None:
    path = make_config(tmp_path, "oidc:\n  issuers: [\n    - x\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert f"{path}:" in problems[0] and "invalid YAML" in problems[0]


def test_not_a_mapping(tmp_path: Path) -> None:
    path = make_config(tmp_path, "- a\n- b\n")
    assert problems_of(path) == [f"{path}:1: the config must be a YAML mapping"]


# -- the CLI -------------------------------------------------------------------------------


def test_cli_valid_config_prints_ok(tmp_path: Path) -> None:
    path = make_config(tmp_path / "conf")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = check_config(path, cwd=elsewhere)  # relative paths resolve against conf/
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (1 tenants, 1 issuers)"


MANY_PROBLEMS = """\
listen: {host: 127.0.0.1, port: 8443}
colour: blue
routing: {base_domain: k8s.example.com}
oidc:
  issuers:
    - issuer: http://idp.example.com
      audiences: [vgate]
      algorithms: [RS256, HS256, none]
policies: policies
tenants:
  - name: tenant1
    upstream: https://10.0.0.10:443
    token_file: secrets/tenant1.token
  - name: tenant1
    upstream: https://10.0.0.11:443
    token_file: secrets/tenant1.token
  - name: Bad_Tenant
    upstream: https://10.0.0.12:443
    token_file: secrets/tenant1.token
  - name: tenant3
    upstream: https://10.0.0.13:443
    token_file: secrets/missing.token
"""


def test_cli_reports_every_validation_problem_with_location(tmp_path: Path) -> None:
    path = make_config(tmp_path / "conf", MANY_PROBLEMS)
    result = check_config(path, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    err = result.stderr
    t = MANY_PROBLEMS
    assert f"{path}:{line_of(t, 'colour')}: colour: unknown field" in err
    assert f"{path}:{line_of(t, 'http://idp')}: oidc.issuers.0.issuer: must be an https://" in err
    algs = next(x for x in err.splitlines() if "oidc.issuers.0.algorithms" in x)
    assert algs.startswith(f"{path}:{line_of(t, 'algorithms')}: ")
    assert "HS256" in algs and "none" in algs and "RS256" not in algs.split(":", 3)[-1]
    assert f"{path}:{line_of(t, 'Bad_Tenant')}: tenants.2.name: must be a DNS label" in err


def test_cli_reports_duplicate_tenant_and_missing_file_alongside_other_problems(
    tmp_path: Path,
) -> None:
    path = make_config(tmp_path / "conf", MANY_PROBLEMS)
    result = check_config(path, cwd=tmp_path)
    assert result.returncode == 1
    assert "tenant listed twice: tenant1" in result.stderr
    assert (
        f"{path}:{line_of(MANY_PROBLEMS, 'missing.token')}: tenants.3.token_file: "
        "file not found" in result.stderr
    )


def test_cli_reports_policy_problems(tmp_path: Path) -> None:
    policy = "tenant: tenant2\nroles:\n  view: {groups: [a]}\n"
    path = make_config(tmp_path / "conf", policy=policy)
    result = check_config(path, cwd=tmp_path)
    assert result.returncode == 1
    pfile = tmp_path / "conf" / "policies" / "tenant1.yaml"
    assert f"{pfile}:1: tenant: unknown tenant 'tenant2'" in result.stderr


def test_cli_missing_config_file(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nope.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert str(tmp_path / "nope.yaml") in result.stderr


def test_default_policies_folder_is_next_to_the_config(tmp_path, monkeypatch) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "vgate.yaml").write_text(
        'oidc: {issuers: [{issuer: "https://idp.example.com", audiences: [vgate]}]}\n'
    )
    monkeypatch.chdir("/")
    assert load_config(tmp_path / "vgate.yaml").policies == tmp_path / "policies"


def test_read_yaml_gives_what_safe_load_gives(tmp_path: Path) -> None:
    """Values are constructed straight from the composed nodes (not serialized and loaded
    again one by one), with the same result as `yaml.safe_load`, lines kept."""
    import yaml

    from gateway.config.source import read_yaml

    text = (
        "a: 1\nb: true\nc: 1.5\nd: null\ne: '007'\nf: 2026-01-02\ng: [x, 2, {h: no}]\n"
        "i: &anchor {j: k}\nl: *anchor\n0x10: 0o17\n"
    )
    path = tmp_path / "values.yaml"
    path.write_text(text)
    doc = read_yaml(path)
    assert doc.data == yaml.safe_load(text)
    assert doc.line_of(("g", 2, "h")) == 7 and doc.line_of(("l",)) == 9
