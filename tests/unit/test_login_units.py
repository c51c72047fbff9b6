"""Units of `vgate login` and the portal config: token cache file, kubeconfig commands,
ExecCredential, the `portal:` config section."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config
from gateway.login.cache import CachedTokens, CacheKey, TokenCache
from gateway.login.exec_credential import exec_credential, requested_api_version
from gateway.login.kubeconfig import (
    KubeconfigSpec,
    bash_command,
    kubeconfig,
    powershell_command,
)
from gateway.login.trust import IssuerTrust
from tests.support.config_files import VALID, make_config
from tests.support.tiers import tool_missing

ROOT = Path(__file__).resolve().parents[2]


def _entry(n: int = 0, user: str = "") -> CachedTokens:
    return CachedTokens(
        "https://idp.example.com",
        "vgate",
        user,
        f"tok-{n}-" + "x" * 5000,
        f"refresh-{n}",
        time.time() + 600,
    )


# -- cache ------------------------------------------------------------------------------


def test_cache_file_is_private_and_round_trips(tmp_path):
    cache = TokenCache(tmp_path / "c")
    old = os.umask(0)  # even a permissive umask must not widen the modes
    try:
        cache.store(_entry())
    finally:
        os.umask(old)
    key = CacheKey("https://idp.example.com", "vgate", "")
    path = cache.path(key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    assert cache.load(key) == _entry().__class__(**json.loads(path.read_text()))
    assert not list((tmp_path / "c").glob("*.tmp"))


def test_cache_keys_keep_users_and_clients_apart(tmp_path):
    cache = TokenCache(tmp_path)
    cache.store(_entry(1, "alice"))
    cache.store(_entry(2, "bob"))
    assert (
        cache.load(CacheKey("https://idp.example.com", "vgate", "alice")).refresh_token
        == "refresh-1"
    )
    assert (
        cache.load(CacheKey("https://idp.example.com", "vgate", "bob")).refresh_token == "refresh-2"
    )
    assert cache.load(CacheKey("https://idp.example.com", "other", "bob")) is None
    assert len(cache.entries()) == 2


def test_cache_ignores_garbage_and_foreign_entries(tmp_path):
    cache = TokenCache(tmp_path)
    key = CacheKey("https://idp.example.com", "vgate", "")
    cache.path(key).write_text("{not json")
    assert cache.load(key) is None
    other = _entry()
    cache.path(key).write_text(json.dumps({**other.__dict__, "issuer": "https://evil"}))
    assert cache.load(key) is None


def _writer(directory: str, rounds: int) -> None:
    cache = TokenCache(Path(directory))
    for i in range(rounds):
        cache.store(_entry(i))


def test_cache_writes_are_atomic_for_concurrent_readers(tmp_path):
    """A reader never sees a half-written file while another process rewrites it."""
    cache = TokenCache(tmp_path)
    cache.store(_entry())
    key = CacheKey("https://idp.example.com", "vgate", "")
    proc = multiprocessing.get_context("fork").Process(target=_writer, args=(str(tmp_path), 300))
    proc.start()
    reads = 0
    while proc.is_alive() or reads < 50:
        entry = cache.load(key)
        assert entry is not None and entry.id_token.endswith("x" * 5000)
        reads += 1
    proc.join()
    assert proc.exitcode == 0


def _hold_lock(directory: str, started, hold: float) -> None:
    cache = TokenCache(Path(directory))
    with cache.locked(CacheKey("https://idp.example.com", "vgate", ""), timeout=10):
        started.set()
        time.sleep(hold)


def test_cache_lock_excludes_other_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(tmp_path), started, 0.5))
    proc.start()
    assert started.wait(5)
    t0 = time.monotonic()
    with TokenCache(tmp_path).locked(CacheKey("https://idp.example.com", "vgate", ""), timeout=10):
        waited = time.monotonic() - t0
    proc.join()
    assert waited > 0.3


# -- kubeconfig -------------------------------------------------------------------------

SPEC = KubeconfigSpec(
    tenant="tenant1",
    server="https://tenant1.k8s.example.com",
    issuer="https://idp.example.com/realms/it's",
    client_id="vgate",
    ca_pem=b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
)


def test_kubeconfig_has_no_secret_and_an_exec_user():
    kc = kubeconfig(SPEC)
    user = kc["users"][0]["user"]
    assert list(user) == ["exec"]
    assert user["exec"]["command"] == "vgate"
    assert user["exec"]["args"] == [
        "login",
        "--issuer=https://idp.example.com/realms/it's",
        "--client-id=vgate",
    ]
    assert kc["clusters"][0]["cluster"]["certificate-authority-data"]


def test_bash_command_writes_what_the_kubeconfig_holds(tmp_path):
    kubectl = "/usr/bin/kubectl"
    if not Path(kubectl).exists():
        tool_missing("kubectl is not installed (/usr/bin/kubectl)")
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\nusers:\n- name: other\n  user: {token: t}\n")
    env = {**os.environ, "KUBECONFIG": str(config), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        ["bash", "-c", bash_command(SPEC)], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stderr
    got = yaml.safe_load(config.read_text())
    want = kubeconfig(SPEC)
    users = {u["name"]: u["user"] for u in got["users"]}
    assert users["other"] == {"token": "t"}
    assert users["vgate-tenant1"]["exec"]["args"] == want["users"][0]["user"]["exec"]["args"]
    clusters = {c["name"]: c["cluster"] for c in got["clusters"]}
    assert clusters["vgate-tenant1"] == want["clusters"][0]["cluster"]
    assert got["current-context"] == "vgate-tenant1"


def test_powershell_command_quotes_single_quotes():
    ps = powershell_command(SPEC)
    assert "'--exec-arg=--issuer=https://idp.example.com/realms/it''s'" in ps
    assert " && " not in ps and ps.count("; kubectl ") == 4


# -- exec credential --------------------------------------------------------------------


def test_exec_credential_shape():
    cred = json.loads(exec_credential("tok", 1_800_000_000, "client.authentication.k8s.io/v1"))
    assert cred == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "tok", "expirationTimestamp": "2027-01-15T08:00:00Z"},
    }
    assert requested_api_version({}) == "client.authentication.k8s.io/v1"
    with pytest.raises(ValueError, match="unsupported"):
        requested_api_version({"KUBERNETES_EXEC_INFO": '{"apiVersion": "v9"}'})


# -- config -----------------------------------------------------------------------------

PORTAL = """\
portal:
  issuer: {issuer}
  client_secret_file: secrets/portal
  cookie_secret_file: secrets/cookie
  public_url: {url}
"""


def _portal_config(
    tmp_path: Path,
    issuer: str = "https://idp.example.com",
    url: str = "https://k8s.example.com",
    cookie: str = "c" * 40,
) -> Path:
    path = make_config(tmp_path, VALID + PORTAL.format(issuer=issuer, url=url))
    (tmp_path / "secrets" / "portal").write_text("s3cret\n")
    (tmp_path / "secrets" / "cookie").write_text(cookie + "\n")
    return path


def test_portal_config_valid(tmp_path):
    cfg = load_config(_portal_config(tmp_path))
    assert cfg.portal is not None and cfg.portal.cli_client_id == "vgate"
    assert cfg.portal.client_secret_file == tmp_path / "secrets" / "portal"


@pytest.mark.parametrize(
    ("issuer", "url", "message"),
    [
        ("https://other.example.com", "https://k8s.example.com", "is not one of oidc.issuers"),
        ("https://idp.example.com", "http://k8s.example.com", "set insecure_http: true"),
        ("https://idp.example.com", "https://k8s.example.com/portal", "without a path"),
    ],
)
def test_portal_config_problems(tmp_path, issuer, url, message):
    with pytest.raises(ConfigError) as info:
        load_config(_portal_config(tmp_path, issuer, url))
    assert any(message in str(p) for p in info.value.problems), info.value.problems


def test_check_config_accepts_a_portal(tmp_path):
    path = _portal_config(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert ": ok" in r.stdout


def test_check_config_reports_a_short_cookie_secret(tmp_path):
    path = _portal_config(tmp_path, cookie="short")
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "cookie_secret_file" in r.stderr and "at least 32 bytes" in r.stderr


def test_logout_tenant_lookup_passes_over_malformed_kubeconfigs(tmp_path, monkeypatch):
    from gateway.login.command import _plugin_args_for_tenant

    odd = tmp_path / "odd.yaml"
    odd.write_text("- just\n- a list\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        yaml.safe_dump(
            {
                "users": [
                    "vgate-t1",
                    {"name": "vgate-t1", "user": []},
                    {"name": "vgate-t1", "user": {"exec": ["login"]}},
                ]
            }
        )
    )
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    good = tmp_path / "good.yaml"
    good.write_text(
        yaml.safe_dump(
            {
                "users": [
                    {
                        "name": "vgate-t1",
                        "user": {
                            "exec": {
                                "command": "vgate",
                                "args": [
                                    "login",
                                    "--issuer=https://idp.example.com",
                                    "--client-id=cli",
                                    "--user=alice",
                                    "--issuer-ca-data=LS0tLS1CRUdJTg==",
                                ],
                            }
                        },
                    }
                ]
            }
        )
    )
    missing = tmp_path / "missing.yaml"
    paths = [odd, broken, binary, missing, good]
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(str(p) for p in paths))
    found = _plugin_args_for_tenant("t1")
    assert found is not None
    assert (found.issuer, found.client_id, found.user) == (
        "https://idp.example.com",
        "cli",
        "alice",
    )
    assert found.trust == IssuerTrust(None, "LS0tLS1CRUdJTg==")  # base64 padding kept
    assert _plugin_args_for_tenant("t2") is None


def test_portal_install_hint_and_session_store_defaults(tmp_path):
    from gateway.portal.pages import rich_text

    cfg = load_config(_portal_config(tmp_path))
    assert cfg.portal is not None
    assert "not published on PyPI" in cfg.portal.install_hint
    assert "pip install vgate " not in cfg.portal.install_hint + " "
    assert cfg.portal.session_store_file == tmp_path / "portal-sessions.db"  # next to config
    path = make_config(
        tmp_path,
        VALID
        + PORTAL.format(issuer="https://idp.example.com", url="https://k8s.example.com")
        + "  install_hint: 'Run `brew install <corp>/vgate` & see https://wiki'\n",
    )
    hint = load_config(path).portal.install_hint
    assert str(rich_text(hint)) == (
        "Run <code>brew install &lt;corp&gt;/vgate</code> &amp; see https://wiki"
    )


# -- the entry lock -----------------------------------------------------------------------


def _hold_and_fail(path: str, started, release, message: str) -> None:
    from gateway.login.lock import EntryLock

    with EntryLock(Path(path), timeout=5) as lock:
        lock.doing("signing in at https://idp.example.com")
        started.set()
        release.wait(10)
        if message:
            lock.failed(message)


@contextlib.contextmanager
def _holder(path: Path, failure: str = ""):
    """Another process holding the lock at `path` until `release` is set (then it records
    `failure`, if any): yields (process, release event)."""
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_and_fail, args=(str(path), started, release, failure))
    proc.start()
    try:
        assert started.wait(10)
        yield proc, release
    finally:
        release.set()
        proc.join(10)


def test_lock_waiters_learn_the_failure_they_waited_for_and_later_callers_do_not(tmp_path):
    from gateway.login.lock import EntryLock

    path = tmp_path / "e.lock"
    notes: list[str] = []
    with _holder(path, "denied") as (proc, release):
        threading.Timer(2.5, release.set).start()
        with EntryLock(path, timeout=10, notify=notes.append) as lock:
            failure = lock.failure_while_waiting()
    assert failure is not None and "denied" in failure and f"pid {proc.pid}" in failure
    assert len(notes) == 1 and f"pid {proc.pid}, signing in at https://idp" in notes[0]
    with EntryLock(path, timeout=1) as lock:  # did not wait: the old failure is not its own
        assert lock.failure_while_waiting() is None


def test_lock_wait_is_bounded_and_names_the_holder(tmp_path):
    from gateway.login.lock import EntryLock, LockWaitTimeout

    path = tmp_path / "e.lock"
    with _holder(path) as (proc, _):
        t0 = time.monotonic()
        with pytest.raises(LockWaitTimeout, match=f"pid {proc.pid}"), EntryLock(path, timeout=0.5):
            pass
        assert 0.5 <= time.monotonic() - t0 < 3


def test_revoke_needs_a_revocation_endpoint_and_logout_says_so(tmp_path):
    """An IdP whose discovery document names no revocation_endpoint: logout reports that the
    refresh token stays valid (exit 1), and still empties the cache."""
    from gateway.login.errors import LoginError
    from gateway.login.provider import Provider
    from tests.support.crafted_op import CraftedProvider

    with CraftedProvider() as op:
        with pytest.raises(LoginError, match="offers no token revocation endpoint"):
            Provider(op.issuer, "vgate").revoke("some-refresh-token")
        cache = TokenCache(tmp_path / "cache")
        cache.store(CachedTokens(op.issuer, "vgate", "", "id", "refresh", time.time() + 600))
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "logout",
                "--all",
                "--cache-dir",
                str(tmp_path / "cache"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    assert r.returncode == 1, r.stderr
    assert "could NOT revoke" in r.stderr and op.issuer in r.stderr
    assert "offers no token revocation endpoint" in r.stderr
    assert cache.entries() == []
