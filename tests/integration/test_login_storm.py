"""Login storms: many `vgate login` processes at once (as kubectl runs them from a script)
against the real dev IdP must do ONE browser sign-in, ONE refresh or ONE device flow, and
all print a valid ExecCredential; a failed or crashed holder must not multiply browsers or
block the others for ever.

`$BROWSER` is a scripted person (tests/support/browser_user.py) that logs each run; a
delay before it acts keeps every process of a storm waiting while the first signs in.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import pytest

from gateway.login.cache import CachedTokens, TokenCache
from tests.support import login_world
from tests.support.login_world import LoginWorld, Plugin, cache_entry, wait_for_line
from tests.support.oidc import OIDCError
from tests.support.tiers import tool_missing

pytestmark = [pytest.mark.slow]

STORM = 20


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoginWorld]:
    if shutil.which("node") is None:
        tool_missing("node is not installed: the OpenID Provider (npm oidc-provider) needs it")
    yield from login_world.running(tmp_path_factory.mktemp("storm"), tls=False)


def _finish_all(plugins: list[Plugin], timeout: float = 180) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    return [p.finish(max(deadline - time.monotonic(), 1)) for p in plugins]


def _one_valid_token(world: LoginWorld, results: list[tuple[int, str, str]], email: str) -> str:
    """Every process printed an ExecCredential, all with the same valid ID token."""
    assert [code for code, _, _ in results] == [0] * len(results), [
        err[-600:] for code, _, err in results if code
    ]
    creds = [json.loads(out) for _, out, _ in results]
    assert {c["kind"] for c in creds} == {"ExecCredential"}
    tokens = {c["status"]["token"] for c in creds}
    assert len(tokens) == 1, f"{len(tokens)} different tokens"
    token = tokens.pop()
    claims = world.claims(token)
    assert claims["email"] == email and claims["exp"] > time.time()
    return token


def _expired_entry(world: LoginWorld, cache, refresh_token: str | None) -> None:
    TokenCache(cache).store(
        CachedTokens(world.issuer, "vgate", "", "an.expired.token", refresh_token, time.time() - 60)
    )


def test_twenty_plugins_with_an_expired_token_open_one_browser(world, tmp_path):
    cache = tmp_path / "cache"
    _expired_entry(world, cache, "a-refresh-token-the-idp-does-not-know")
    runs = len(world.browser_runs())
    env = world.env("alice", cache=cache, delay=1.5)
    t0 = time.monotonic()
    results = _finish_all(world.start_many(STORM, world.login_args(), env, "browser"))
    elapsed = time.monotonic() - t0
    _one_valid_token(world, results, "alice@example.com")
    assert len(world.browser_runs()) == runs + 1, world.browser_runs()[runs:]
    stderr = "".join(err for _, _, err in results)
    assert stderr.count("open this URL") == 1  # the sign-in URL is shown once
    assert stderr.count("signing in again") == 1  # one refresh attempt, by the holder
    print(f"{STORM} concurrent plugins, one browser sign-in: {elapsed:.1f}s")


def test_twenty_plugins_refresh_once_and_keep_the_token_family(world, tmp_path):
    """Refresh tokens rotate; a second use of the same one makes the IdP revoke the whole
    grant. After the storm the newest refresh token must still work."""
    cache = tmp_path / "cache"
    env = world.env("bob", cache=cache)
    r = world.vgate(*world.login_args(), env=env)
    assert r.returncode == 0, r.stderr
    entry = cache_entry(cache)
    _expired_entry(world, cache, entry["refresh_token"])
    runs = len(world.browser_runs())
    results = _finish_all(world.start_many(STORM, world.login_args(), env, "refresh"))
    _one_valid_token(world, results, "bob@example.com")
    assert len(world.browser_runs()) == runs, "a refresh must not open a browser"
    assert not any("signing in again" in err for _, _, err in results)
    rotated = cache_entry(cache)["refresh_token"]
    assert rotated != entry["refresh_token"]
    world.idp.refresh(rotated)  # the family is intact: no parallel reuse happened
    with pytest.raises(OIDCError) as info:
        world.idp.refresh(entry["refresh_token"])  # the first one was used exactly once
    assert info.value.error == "invalid_grant"


def test_twenty_plugins_without_a_browser_share_one_device_flow(world, tmp_path):
    cache = tmp_path / "cache"
    runs = len(world.browser_runs())
    env = world.env("carol", cache=cache, browser=None)  # no BROWSER, no DISPLAY
    plugins = world.start_many(STORM, world.login_args(), env, "device")
    url = None
    deadline = time.monotonic() + 90
    while url is None and time.monotonic() < deadline:
        for p in plugins:
            line = next((x for x in p.stderr().splitlines() if "or open " in x), None)
            if line:
                url = line.split("or open ", 1)[1].strip()
                break
        time.sleep(0.1)
    assert url, "no device-flow URL was printed"
    world.idp.approve_device("carol", url)  # the person, on their phone
    results = _finish_all(plugins)
    _one_valid_token(world, results, "carol@example.com")
    stderr = "".join(err for _, _, err in results)
    assert stderr.count("enter the code") == 1 and stderr.count("or open ") == 1
    assert len(world.browser_runs()) == runs


def test_a_browser_that_cannot_open_falls_back_to_the_device_flow(world, tmp_path):
    cache = tmp_path / "cache"
    runs = len(world.browser_runs())
    env = world.env("alice", cache=cache, browser="broken-browser")
    plugin = world.start(world.login_args(), env, "broken")
    url = wait_for_line(plugin, "or open ").split("or open ", 1)[1].strip()
    world.idp.approve_device("alice", url)
    code, out, err = plugin.finish(90)
    assert code == 0, err
    assert world.claims(json.loads(out)["status"]["token"])["email"] == "alice@example.com"
    assert "the browser could not be opened" in err
    assert [line.split()[0] for line in world.browser_runs()[runs:]] == ["broken"]


def test_a_failed_sign_in_fails_its_waiters_instead_of_opening_more_browsers(world, tmp_path):
    cache = tmp_path / "cache"
    runs = len(world.browser_runs())
    env = world.env("alice", cache=cache, mode="deny", delay=4)  # all 5 wait by then
    results = _finish_all(world.start_many(5, world.login_args(), env, "deny"))
    assert [code for code, _, _ in results] == [1] * 5
    assert len(world.browser_runs()) == runs + 1
    errors = [err for _, _, err in results]
    assert sum("the sign-in this command waited for" in e for e in errors) == 4, errors
    assert all("denied or cancelled" in e for e in errors)
    assert all(out == "" for _, out, _ in results)
    assert not list(cache.glob("*.json"))


def _holder(world: LoginWorld, cache, name: str) -> Plugin:
    """A plugin that holds the lock signing in, its browser run over ("the tab was
    closed"): it waits for a redirect that never comes."""
    runs = len(world.browser_runs())
    holder = world.start(
        world.login_args("--timeout=120"), world.env("bob", cache=cache, mode="close"), name
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = [p.read_text() for p in cache.glob("*.lock")] if cache.exists() else []
        if any(f'"pid": {holder.proc.pid}' in r and "signing in" in r for r in records) and any(
            line.startswith("close ") for line in world.browser_runs()[runs:]
        ):
            return holder
        assert holder.proc.poll() is None, holder.stderr()
        time.sleep(0.05)
    raise AssertionError("the holder never started signing in:\n" + holder.stderr())


def test_a_crashed_holder_leaves_no_stale_lock(world, tmp_path):
    cache = tmp_path / "cache"
    runs = len(world.browser_runs())
    holder = _holder(world, cache, "crashing-holder")
    waiters = world.start_many(5, world.login_args(), world.env("bob", cache=cache), "waiter")
    time.sleep(1.5)
    assert all(w.proc.poll() is None for w in waiters), "the waiters did not wait"
    holder.proc.kill()  # SIGKILL: no cleanup, no record of a failure
    holder.proc.wait(10)
    _one_valid_token(world, _finish_all(waiters), "bob@example.com")
    assert len(world.browser_runs()) == runs + 2  # the holder's tab, then one sign-in


def test_waiting_for_a_hung_holder_is_bounded(world, tmp_path):
    cache = tmp_path / "cache"
    holder = _holder(world, cache, "hung-holder")
    try:
        t0 = time.monotonic()
        r = world.vgate(*world.login_args("--lock-timeout=2"), env=world.env("bob", cache=cache))
        elapsed = time.monotonic() - t0
    finally:
        holder.proc.kill()
        holder.proc.wait(10)
    assert r.returncode == 1 and r.stdout == ""
    assert elapsed < 20
    assert "gave up after 2 s waiting for another vgate login" in r.stderr
    assert f"pid {holder.proc.pid}, signing in at {world.issuer}" in r.stderr
