"""`vgate logout` revokes the refresh token at an IdP behind a private CA, and says so
plainly when it cannot (the real npm oidc-provider serving TLS with a test CA).

Proof of revocation is the IdP itself refusing the refresh token afterwards (and, where
logout reports a failure, still accepting it: the message told the truth).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import login_world
from tests.support.login_world import LoginWorld, cache_entry
from tests.support.oidc import OIDCError
from tests.support.tiers import tool_missing


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoginWorld]:
    if shutil.which("node") is None:
        tool_missing("node is not installed: the OpenID Provider (npm oidc-provider) needs it")
    yield from login_world.running(tmp_path_factory.mktemp("tls-idp"), tls=True)


def _login(world: LoginWorld, cache: Path, user: str = "alice", *extra: str) -> None:
    """Sign in as `user`, trusting the IdP by --issuer-ca-data (as kubeconfigs do)."""
    r = world.vgate(
        *world.login_args(f"--issuer-ca-data={world.ca_data}", *extra),
        env=world.env(user, cache=cache),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "ExecCredential"


def _refresh_tokens(cache: Path) -> list[str]:
    return [json.loads(p.read_text())["refresh_token"] for p in sorted(cache.glob("*.json"))]


def _refused(world: LoginWorld, refresh_token: str) -> bool:
    try:
        world.idp.refresh(refresh_token)
    except OIDCError as exc:
        assert exc.error == "invalid_grant", exc
        return True
    return False


def test_logout_tenant_revokes_through_the_private_ca(world, tmp_path):
    cache = tmp_path / "cache"
    r = world.vgate(
        "kubeconfig",
        "--server=https://127.0.0.1:9/clusters/tenant1",
        "--tenant=tenant1",
        f"--issuer={world.issuer}",
        f"--issuer-ca-file={world.ca.cert_file}",
        env=world.env(cache=cache),
    )
    assert r.returncode == 0, r.stderr
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(r.stdout)
    plugin_args = yaml.safe_load(r.stdout)["users"][0]["user"]["exec"]["args"]
    assert any(a.startswith("--issuer-ca-data=") for a in plugin_args)
    r = world.vgate(*plugin_args, env=world.env("alice", cache=cache))  # as kubectl runs it
    assert r.returncode == 0, r.stderr
    refresh = cache_entry(cache)["refresh_token"]

    r = world.vgate(
        "logout", "--tenant=tenant1", env=world.env(cache=cache, KUBECONFIG=str(kubeconfig))
    )
    assert r.returncode == 0, r.stderr
    assert "refresh token is revoked" in r.stderr and r.stdout == ""
    assert not list(cache.glob("*.json"))
    assert _refused(world, refresh)


def test_logout_all_trusts_the_idp_as_each_login_did(world, tmp_path):
    cache = tmp_path / "cache"
    _login(world, cache, "alice", "--user=alice")
    _login(world, cache, "bob", "--user=bob")
    tokens = _refresh_tokens(cache)
    assert len(tokens) == 2
    r = world.vgate("logout", "--all", env=world.env(cache=cache))  # no CA on the command line
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("refresh token is revoked") == 2
    assert not list(cache.glob("*.json"))
    assert all(_refused(world, t) for t in tokens)


def test_logout_with_the_idp_down_says_it_did_not_revoke(world, tmp_path):
    cache = tmp_path / "cache"
    _login(world, cache)
    refresh = cache_entry(cache)["refresh_token"]
    world.idp.stop()
    try:
        r = world.vgate("logout", f"--issuer={world.issuer}", env=world.env(cache=cache))
    finally:
        world.idp.start()
    assert r.returncode == 1, r.stderr
    assert "could NOT revoke" in r.stderr and world.issuer in r.stderr
    assert "cannot reach the identity provider" in r.stderr
    assert "logged out of" not in r.stderr
    assert not list(cache.glob("*.json"))  # the local tokens are gone all the same
    assert not _refused(world, refresh)  # and the IdP does accept the token: it was true


def test_logout_of_an_entry_without_the_ca_names_the_tls_failure(world, tmp_path):
    """An entry cached without its trust (as before it was kept): the revocation fails TLS,
    and logout says so instead of "logged out"; with --issuer-ca-file it succeeds."""
    for ca_flag, expect_code in (([], 1), ([f"--issuer-ca-file={world.ca.cert_file}"], 0)):
        cache = tmp_path / f"cache{expect_code}"
        _login(world, cache)
        refresh = cache_entry(cache)["refresh_token"]
        path = next(cache.glob("*.json"))
        entry = json.loads(path.read_text())
        path.write_text(
            json.dumps({k: v for k, v in entry.items() if not k.startswith("issuer_ca_")})
        )
        r = world.vgate("logout", f"--issuer={world.issuer}", *ca_flag, env=world.env(cache=cache))
        assert r.returncode == expect_code, r.stderr
        assert not list(cache.glob("*.json"))
        if expect_code:
            assert "CERTIFICATE_VERIFY_FAILED" in r.stderr and "--issuer-ca-file" in r.stderr
            assert not _refused(world, refresh)
        else:
            assert _refused(world, refresh)


def test_keep_session_says_the_token_stays_valid(world, tmp_path):
    cache = tmp_path / "cache"
    _login(world, cache)
    refresh = cache_entry(cache)["refresh_token"]
    r = world.vgate("logout", "--all", "--keep-session", env=world.env(cache=cache))
    assert r.returncode == 0 and "stays valid at the IdP" in r.stderr
    assert not _refused(world, refresh)
