"""`vgate login` as real kubectl's exec plugin, against the real dev IdP and a gateway.

The browser step is `tests/support/browser_user.py` run as `$BROWSER`: it signs in through
the IdP's forms and calls the loopback redirect. Its log counts how often a login happened.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import sso_world
from tests.support.oidc import OIDCProvider, free_port
from tests.support.tiers import tool_missing


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sso_world.SSOWorld]:
    yield from sso_world.running(tmp_path_factory.mktemp("sso"))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _kubeconfig(
    world: sso_world.SSOWorld, tmp_path: Path, tenant: str = "tenant1", *extra: str
) -> Path:
    r = world.vgate(
        "kubeconfig",
        "--server",
        f"{world.url}/clusters/{tenant}",
        "--tenant",
        tenant,
        "--issuer",
        world.idp.issuer,
        "--certificate-authority",
        str(world.ca.cert_file),
    )
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for arg in extra:  # extra plugin arguments, e.g. --grant=device-code
        text = text.replace(
            "      - --client-id=vgate\n", f"      - --client-id=vgate\n      - {arg}\n"
        )
    path = tmp_path / f"kubeconfig-{tenant}"
    path.write_text(text)
    return path


def _entry_file(cache: Path) -> Path:
    files = list(cache.glob("*.json"))
    assert len(files) == 1, files
    return files[0]


def _whoami(world, kubeconfig: Path, env: dict) -> subprocess.CompletedProcess:
    return world.kubectl(kubeconfig, "auth", "whoami", "-o", "json", env=env)


def _username(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["status"]["userInfo"]["username"]


def test_login_then_cache_without_idp(world, tmp_path, cache):
    kc = _kubeconfig(world, tmp_path)
    env = world.plugin_env("alice", cache=cache)
    before = world.browser_runs()
    assert _username(_whoami(world, kc, env)) == "oidc:alice@example.com"
    assert world.browser_runs() == before + 1
    entry = _entry_file(cache)
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    world.idp.stop()  # the second call must not need the IdP at all
    try:
        t0 = time.monotonic()
        assert _username(_whoami(world, kc, env)) == "oidc:alice@example.com"
        print(f"cached kubectl auth whoami: {time.monotonic() - t0:.2f}s")
        assert world.browser_runs() == before + 1
    finally:
        world.idp.start()


def test_expiry_refreshes_silently_then_failed_refresh_logs_in(world, tmp_path, cache):
    kc = _kubeconfig(world, tmp_path)
    env = world.plugin_env("bob", cache=cache)
    before = world.browser_runs()
    assert _username(_whoami(world, kc, env)) == "oidc:bob@example.com"
    assert world.browser_runs() == before + 1
    path = _entry_file(cache)
    first = json.loads(path.read_text())
    path.write_text(json.dumps({**first, "expires_at": time.time() - 5}))  # as if expired
    r = _whoami(world, kc, env)
    assert _username(r) == "oidc:bob@example.com"
    second = json.loads(path.read_text())
    assert world.browser_runs() == before + 1, "refresh must not open a browser"
    # (the ID token itself may be byte-identical when issued within the same second)
    assert second["refresh_token"] != first["refresh_token"]  # rotated by the IdP
    assert second["expires_at"] > time.time()

    path.write_text(
        json.dumps({**second, "expires_at": time.time() - 5, "refresh_token": "revoked-or-garbage"})
    )
    r = _whoami(world, kc, env)
    assert _username(r) == "oidc:bob@example.com"
    assert "signing in again" in r.stderr
    assert world.browser_runs() == before + 2


def test_logout_forces_a_new_login(world, tmp_path, cache):
    kc = _kubeconfig(world, tmp_path)
    env = world.plugin_env("carol", cache=cache)
    _username(_whoami(world, kc, env))
    runs = world.browser_runs()
    old_refresh = json.loads(_entry_file(cache).read_text())["refresh_token"]
    r = world.vgate("logout", "--tenant", "tenant1", env={**env, "KUBECONFIG": str(kc)})
    assert r.returncode == 0 and "logged out" in r.stderr, r.stderr
    assert r.stdout == ""
    assert not list(cache.glob("*.json"))
    with pytest.raises(Exception, match="invalid_grant"):
        world.idp.refresh(old_refresh)  # revoked at the IdP too
    assert _username(_whoami(world, kc, env)) == "oidc:carol@example.com"
    assert world.browser_runs() == runs + 1


def test_users_side_by_side_and_logout_all(world, tmp_path, cache):
    for user in ("alice", "bob"):
        r = world.vgate(
            "login",
            f"--issuer={world.idp.issuer}",
            "--client-id=vgate",
            f"--user={user}",
            env=world.plugin_env(user, cache=cache),
        )
        assert r.returncode == 0, r.stderr
    assert len(list(cache.glob("*.json"))) == 2
    r = world.vgate(
        "logout", "--issuer", world.idp.issuer, "--user", "bob", env=world.plugin_env(cache=cache)
    )
    assert r.returncode == 0 and len(list(cache.glob("*.json"))) == 1
    r = world.vgate("logout", "--all", env=world.plugin_env(cache=cache))
    assert r.returncode == 0 and not list(cache.glob("*.json"))


@pytest.mark.slow
def test_device_code_through_kubectl(world, tmp_path, cache):
    kc = _kubeconfig(world, tmp_path, "tenant1", "--grant=device-code")
    env = world.plugin_env("bob", cache=cache)
    runs = world.browser_runs()
    proc = subprocess.Popen(
        [sso_world.KUBECTL, "--kubeconfig", str(kc), "auth", "whoami", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seen: list[str] = []
    url = None
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "or open " in line:
            url = line.split("or open ", 1)[1].strip()
            break
    assert url, "".join(seen)
    assert any("enter the code" in s for s in seen)
    world.idp.approve_device("bob", url)  # the test acts as the user on another device
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"]["userInfo"]["username"] == "oidc:bob@example.com"
    assert world.browser_runs() == runs  # no browser on a headless box


def test_concurrent_plugins_do_one_login(world, cache):
    env = {
        **world.plugin_env("alice", cache=cache),
        "KUBERNETES_EXEC_INFO": json.dumps(
            {
                "apiVersion": "client.authentication.k8s.io/v1",
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
        ),
    }
    runs = world.browser_runs()
    argv = [
        sys.executable,
        "-m",
        "gateway",
        "login",
        f"--issuer={world.idp.issuer}",
        "--client-id=vgate",
    ]
    procs = [
        subprocess.Popen(
            argv,
            cwd=sso_world.REPO_ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(5)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1] for r in results]
    creds = [json.loads(out) for out, _ in results]
    assert {c["kind"] for c in creds} == {"ExecCredential"}
    assert len({c["status"]["token"] for c in creds}) == 1
    assert world.browser_runs() == runs + 1


def test_exec_info_v1beta1_is_answered_in_kind(world, cache):
    env = {
        **world.plugin_env("alice", cache=cache),
        "KUBERNETES_EXEC_INFO": json.dumps(
            {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "kind": "ExecCredential",
                "spec": {},
            }
        ),
    }
    r = world.vgate("login", f"--issuer={world.idp.issuer}", "--client-id=vgate", env=env)
    assert r.returncode == 0, r.stderr
    cred = json.loads(r.stdout)
    assert cred["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert cred["status"]["expirationTimestamp"].endswith("Z")


def _fails(world, *args: str, env: dict) -> str:
    r = world.vgate("login", *args, env=env)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == "", "nothing but an ExecCredential may reach stdout"
    assert "Traceback" not in r.stderr
    return r.stderr


def test_clear_errors(world, cache):
    env = world.plugin_env("alice", cache=cache)
    issuer = world.idp.issuer
    err = _fails(world, f"--issuer={issuer}/not-here", "--client-id=vgate", env=env)
    assert "does not look like an OpenID Provider" in err and "404" in err
    other = issuer.replace("127.0.0.1", "localhost")
    err = _fails(world, f"--issuer={other}", "--client-id=vgate", env=env)
    assert "wrong issuer" in err
    err = _fails(world, f"--issuer=http://127.0.0.1:{free_port()}", "--client-id=vgate", env=env)
    assert "cannot reach the identity provider" in err
    err = _fails(
        world,
        f"--issuer={issuer}",
        "--client-id=vgate",
        env=world.plugin_env("alice", mode="deny", cache=cache),
    )
    assert "denied or cancelled" in err
    t0 = time.monotonic()
    err = _fails(
        world,
        f"--issuer={issuer}",
        "--client-id=vgate",
        "--timeout=2",
        env=world.plugin_env("alice", mode="close", cache=cache),
    )
    assert "no login arrived within 2 s" in err and "closed" in err
    assert time.monotonic() - t0 < 20
    err = _fails(
        world,
        f"--issuer={issuer}",
        "--client-id=not-registered",
        "--browser=none",
        "--timeout=1",
        env=env,
    )
    assert "open this URL" in err  # headless: the URL is printed, never opened
    assert not list(cache.glob("*.json"))


@pytest.mark.slow
def test_expired_device_code(tmp_path):
    if sso_world.missing_tools():
        tool_missing(sso_world.missing_tools())
    with OIDCProvider(tmp_path / "idp", users=sso_world.USERS, ttl={"DeviceCode": 2}) as idp:
        env = {
            **os.environ,
            "PYTHONPATH": str(sso_world.REPO_ROOT),
            "VGATE_CACHE_DIR": str(tmp_path / "cache"),
        }
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "login",
                f"--issuer={idp.issuer}",
                "--client-id=vgate",
                "--grant=device-code",
            ],
            cwd=sso_world.REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1 and r.stdout == ""
    assert "enter the code" in r.stderr
    assert "device code expired" in r.stderr


def test_loopback_ports_fall_back(world, cache):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        free = free_port()
        env = {**world.plugin_env("alice", cache=cache), "VGATE_LOGIN_PORTS": f"{taken},{free}"}
        r = world.vgate("login", f"--issuer={world.idp.issuer}", "--client-id=vgate", env=env)
    assert r.returncode == 0, r.stderr
    assert f"127.0.0.1%3A{free}%2Fcallback" in r.stderr
