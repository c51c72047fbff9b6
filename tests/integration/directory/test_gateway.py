"""End to end: real kubectl and the real IdP through the gateway, groups from a real Samba
AD DC, tenants served by real kube-apiservers (the session's, `tests/support/tenants.py`)."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.directory.corp import Corp
from tests.support.directory.samba import SERVICE_DN, Seeder
from tests.support.gateway_thread import GatewayThread
from tests.support.kubectl_world import World, require_tools
from tests.support.oidc import OIDCProvider
from tests.support.tenants import RealTenants, real_tenants, tenant_entries

REPO = Path(__file__).resolve().parents[3]
AD_USERS = ("alice", "bob", "carol", "erin", "henry", "frank")


def _idp_users() -> dict[str, dict]:
    users = {
        u: {"email": f"{u}@corp.example.com", "name": u.title(), "groups": []} for u in AD_USERS
    }
    users["zed"] = {"email": "zed@corp.example.com", "name": "Not in AD", "groups": []}
    return users


def _policies(corp: Corp) -> dict[str, dict]:
    return {
        "tenant1.yaml": {
            "tenant": "tenant1",
            "roles": {"cluster-admin": {"directory_groups": [corp.groups["k8s-tenant1-admins"]]}},
            "forward_directory_groups": {"match": "^CN=team-"},
        },
        "tenant2.yaml": {
            "tenant": "tenant2",
            "roles": {
                "view": {"directory_groups": [corp.sids["k8s-tenant2-viewers"]]},
                "cluster-admin": {"directory_groups": [corp.sids["team-web"]]},
            },
        },
    }


class ADWorld(World):
    corp: Corp

    def config(self, **ldap: object) -> dict:
        """The gateway config (a dict), with `ldap` overrides."""
        cfg = yaml.safe_load(self.gateway.config_file.read_text())
        cfg["ldap"].update(ldap)
        cfg.pop("listen", None)
        return cfg

    def get(
        self, tenant: str, user: str, gateway: GatewayThread | None = None, timeout: float = 15
    ) -> httpx.Response:
        gw = gateway or self.gateway
        return httpx.get(
            f"{gw.url}/clusters/{tenant}/api/v1/namespaces/default/pods",
            headers={"Authorization": f"Bearer {self.token(user)}"},
            verify=self.tls(),
            timeout=timeout,
        )

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_file))

    def token(self, user: str) -> str:
        cache = self.__dict__.setdefault("_tokens", {})
        if user not in cache:
            cache[user] = self.idp.login(user).id_token
        return cache[user]


def _gateway_config(base: Path, corp: Corp, idp: OIDCProvider, tenants: RealTenants, leaf) -> dict:
    policies = base / "policies"
    policies.mkdir(exist_ok=True)
    for file, doc in _policies(corp).items():
        (policies / file).write_text(yaml.safe_dump(doc))
    return {
        "tls": {"cert_file": str(leaf.cert_file), "key_file": str(leaf.key_file)},
        "routing": {"path_prefix": "/clusters"},
        "oidc": {"issuers": [idp.issuer_entry()]},
        "policies": str(policies),
        "audit": {"file": str(base / "audit.log")},
        "tenants": tenant_entries(tenants, base),
        "ldap": {
            "urls": [corp.dc.ldap_url],
            "tls": "starttls",
            "ca_file": str(corp.ca.cert_file),
            "bind_dn": SERVICE_DN,
            "bind_password_file": str(corp.password_file()),
            "user_base_dn": "OU=People,DC=corp,DC=example,DC=com",
            "user_attribute": "userPrincipalName",
            "user_claim": "email",
            "group_base_dn": "DC=corp,DC=example,DC=com",
            "cache_ttl_seconds": 60,
            "max_staleness_seconds": 120,
            "retry_interval_seconds": 0.5,
            "timeout_seconds": 1,
            "connect_timeout_seconds": 1,
            "flush_file": str(base / "directory.flush"),
        },
    }


@pytest.fixture(scope="module")
def ad_world(corp: Corp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ADWorld]:
    require_tools()
    base = tmp_path_factory.mktemp("adworld")
    leaf = corp.ca.issue("gateway", ["127.0.0.1", "localhost"])
    tenants = real_tenants()
    idp = OIDCProvider(base / "idp", users=_idp_users()).start()
    gateway = GatewayThread(
        base / "gateway", _gateway_config(base, corp, idp, tenants, leaf)
    ).start()
    world = ADWorld(base, corp.ca, idp, gateway, dict(tenants.servers))
    world.corp = corp
    try:
        yield world
    finally:
        gateway.stop()
        idp.stop()


def vgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_kubectl_whoami_as_nested_admin(ad_world: ADWorld) -> None:
    done = ad_world.kubectl("tenant1", "alice", "auth", "whoami", "-o", "json")
    assert done.returncode == 0, done.stderr.decode()
    info = json.loads(done.stdout)["status"]["userInfo"]
    assert info["username"] == "oidc:alice@corp.example.com"
    assert "vgate:cluster-admin" in info["groups"]
    # forwarded by the tenant's forward_directory_groups, in its stable form
    assert "ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com" in info["groups"]
    assert not any(g.startswith("ad:cn=sre") for g in info["groups"])
    done = ad_world.kubectl("tenant1", "alice", "auth", "whoami")
    assert b"vgate:cluster-admin" in done.stdout


@pytest.mark.parametrize("user", ["bob", "carol", "zed"])
def test_users_outside_the_group_get_403(ad_world: ADWorld, user: str) -> None:
    done = ad_world.kubectl("tenant1", user, "get", "pods")
    assert done.returncode != 0
    assert b"Forbidden" in done.stderr or b"forbidden" in done.stderr, done.stderr
    r = ad_world.get("tenant1", user)
    assert r.status_code == 403 and r.json()["kind"] == "Status"


def test_sid_rule_through_300_groups(ad_world: ADWorld) -> None:
    r = ad_world.get("tenant2", "erin")
    assert r.status_code == 200, r.text


def test_audit_line_names_the_directory_group(ad_world: ADWorld) -> None:
    assert ad_world.get("tenant1", "alice").status_code == 200
    deadline = time.monotonic() + 3
    events: list[dict] = []
    while time.monotonic() < deadline:
        lines = (ad_world.dir / "audit.log").read_text().splitlines()
        events = [json.loads(x) for x in lines if '"decision":"allow"' in x and "alice@corp" in x]
        if events:
            break
        time.sleep(0.1)
    assert events
    event = events[-1]
    assert event["directory_groups"] == [
        {"role": "cluster-admin", "group": ad_world.corp.groups["k8s-tenant1-admins"]}
    ]
    assert event["directory_user"] == ad_world.corp.users["alice"]
    denied = ad_world.get("tenant1", "carol")
    assert denied.status_code == 403


def test_cached_path_makes_no_directory_round_trip(ad_world: ADWorld) -> None:
    directory = ad_world.gateway.gateway.directory
    assert ad_world.get("tenant1", "alice").status_code == 200
    before = directory.round_trips
    token = ad_world.token("alice")
    loop = ad_world.gateway.loop
    created: list[object] = []

    def counting_factory(loop, coro, **kw):
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kw)

    with httpx.Client(verify=ad_world.tls()) as client:
        client.get(f"{ad_world.gateway.url}/healthz")  # connection open before counting
        loop.call_soon_threadsafe(loop.set_task_factory, counting_factory)
        try:
            for _ in range(200):
                r = client.get(
                    f"{ad_world.gateway.url}/clusters/tenant1/api/v1/namespaces",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert r.status_code == 200
        finally:
            loop.call_soon_threadsafe(loop.set_task_factory, None)
    assert directory.round_trips == before
    per_request = [
        c for c in created if "_accept_connection" not in getattr(c, "__qualname__", "")
    ]  # asyncio's own accept of a new keep-alive connection
    assert per_request == [], "the cached path runs without creating a task"
    metrics = httpx.get(f"{ad_world.gateway.metrics_url}/metrics")
    assert 'vgate_directory_cache_total{result="hit"}' in metrics.text


def test_group_removal_takes_effect_after_a_flush(ad_world: ADWorld) -> None:
    corp = ad_world.corp
    assert ad_world.get("tenant1", "henry").status_code == 200
    seeder = Seeder(corp.dc.admin())
    seeder.remove_members(corp.groups["sre-oncall"], [corp.users["henry"]])
    try:
        assert ad_world.get("tenant1", "henry").status_code == 200  # cached (TTL 60 s)
        done = vgate(
            "directory",
            "flush",
            "--config",
            str(ad_world.gateway.config_file),
            "--user",
            "HENRY@corp.example.com",
        )
        assert done.returncode == 0, done.stderr
        time.sleep(1.2)  # workers look at the flush file at most once a second
        assert ad_world.get("tenant1", "henry").status_code == 403
        assert ad_world.get("tenant1", "alice").status_code == 200  # others stay cached
    finally:
        seeder.add_members(corp.groups["sre-oncall"], [corp.users["henry"]])
        seeder.conn.unbind()
    done = vgate("directory", "flush", "--config", str(ad_world.gateway.config_file))
    assert done.returncode == 0 and "every user" in done.stdout


def test_policy_explain(ad_world: ADWorld) -> None:
    config = str(ad_world.gateway.config_file)
    done = vgate(
        "policy",
        "explain",
        "--config",
        config,
        "--user",
        "alice@corp.example.com",
        "--tenant",
        "tenant1",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"entry: {ad_world.corp.users['alice']}" in out
    assert (
        "user -> CN=sre-oncall,OU=Groups,DC=corp,DC=example,DC=com -> "
        "CN=platform-admins,OU=Groups,DC=corp,DC=example,DC=com -> "
        "CN=k8s-tenant1-admins,OU=Groups,DC=corp,DC=example,DC=com"
    ) in out
    assert "role cluster-admin: directory group CN=k8s-tenant1-admins" in out
    assert "tenant1.yaml:" in out
    assert "Impersonate-User: oidc:alice@corp.example.com" in out
    assert "Impersonate-Group: vgate:cluster-admin" in out
    assert "Impersonate-Group: ad:cn=team-web,ou=groups,dc=corp,dc=example,dc=com" in out
    done = vgate(
        "policy",
        "explain",
        "--config",
        config,
        "--user",
        "carol@corp.example.com",
        "--tenant",
        "tenant1",
    )
    assert done.returncode == 1 and "account disabled" in done.stdout
    done = vgate(
        "policy", "explain", "--config", config, "--user", "*)(objectClass=*", "--tenant", "tenant1"
    )
    assert done.returncode == 1 and "no entry found" in done.stdout


def test_explain_with_a_wrong_bind_password(ad_world: ADWorld, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pw"
    bad.write_text("wrong\n")
    cfg = ad_world.config(bind_password_file=str(bad))
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(cfg))
    done = vgate(
        "policy",
        "explain",
        "--config",
        str(tmp_path / "vgate.yaml"),
        "--user",
        "alice@corp.example.com",
        "--tenant",
        "tenant1",
    )
    assert done.returncode == 2
    assert "refused the bind as CN=svc-vgate" in done.stdout and "wrong password" in done.stdout


@pytest.mark.slow
def test_slow_directory_does_not_hold_other_tenants(ad_world: ADWorld, running_dc) -> None:
    assert ad_world.get("tenant2", "bob").status_code == 200  # bob cached
    ad_world.token("frank")
    result: dict[str, object] = {}

    def slow() -> None:
        started = time.monotonic()
        result["response"] = ad_world.get("tenant1", "frank")  # never looked up: a miss
        result["took"] = time.monotonic() - started

    running_dc.pause()
    try:
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.2)
        fast = []
        while t.is_alive() and len(fast) < 20:
            started = time.monotonic()
            assert ad_world.get("tenant2", "bob").status_code == 200
            fast.append(time.monotonic() - started)
        t.join(15)
    finally:
        running_dc.resume()
    response = result["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 503 and response.json()["code"] == 503
    assert "Retry-After" not in response.headers  # kubectl would retry for a minute or more
    assert 0.9 < float(result["took"]) < 5  # bounded by the directory timeouts
    assert len(fast) >= 3 and max(fast) < 0.5
    time.sleep(0.6)  # past the retry interval
    assert ad_world.get("tenant1", "frank").status_code == 403  # answered again


@pytest.mark.slow
def test_directory_stopped_serves_stale_then_fails_closed(
    ad_world: ADWorld, running_dc, tmp_path: Path
) -> None:
    cfg = ad_world.config(
        cache_ttl_seconds=1,
        max_staleness_seconds=3,
        retry_interval_seconds=0.3,
        flush_file=str(tmp_path / "flush"),
    )
    with GatewayThread(tmp_path / "gw", cfg) as gw:
        assert ad_world.get("tenant1", "alice", gw).status_code == 200
        stopped = time.monotonic()
        running_dc.stop()
        codes = []
        while time.monotonic() - stopped < 5:
            codes.append(
                (
                    round(time.monotonic() - stopped, 1),
                    ad_world.get("tenant1", "alice", gw).status_code,
                )
            )
            time.sleep(0.2)
        ok_times = [t for t, c in codes if c == 200]
        refused = [t for t, c in codes if c == 503]
        assert ok_times and max(ok_times) > 1.2, codes  # stale past the TTL
        assert refused and min(refused) < 3.6 and codes[-1][1] == 503, codes
        assert all(c in (200, 503) for _, c in codes)
        r = ad_world.get("tenant1", "henry", gw)  # never cached: refused at once
        assert r.status_code == 503 and "directory" in r.json()["message"]
        metrics = httpx.get(f"{gw.metrics_url}/metrics").text
        assert 'vgate_directory_cache_total{result="stale"}' in metrics
        running_dc.start()
        time.sleep(0.4)
        assert ad_world.get("tenant1", "alice", gw).status_code == 200


def test_gateway_with_a_wrong_bind_password_says_so_and_fails_closed(
    ad_world: ADWorld, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "bad.pw"
    bad.write_text("wrong\n")
    cfg = ad_world.config(bind_password_file=str(bad), flush_file=str(tmp_path / "flush"))
    with caplog.at_level("INFO", logger="vgate.serve"), GatewayThread(tmp_path / "gw", cfg) as gw:
        r = ad_world.get("tenant1", "alice", gw)
        assert r.status_code == 503 and r.json()["kind"] == "Status"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "directory check failed" not in caplog.text:
            time.sleep(0.05)
    assert "directory check failed" in caplog.text
    assert "wrong password" in caplog.text


def test_a_user_in_more_groups_than_max_groups_is_refused_alone(
    ad_world: ADWorld, tmp_path: Path
) -> None:
    """erin's 300+ groups over a `max_groups` of 100: erin gets a 403 saying why (not a
    503 "try again", which would never help), and the next user is looked up and served at
    once. Before, erin's lookup marked the directory down, and alice got a 503."""
    cfg = ad_world.config(max_groups=100, flush_file=str(tmp_path / "flush"))
    with GatewayThread(tmp_path / "gw", cfg) as gw:
        refused = ad_world.get("tenant2", "erin", gw)
        assert refused.status_code == 403, refused.text
        assert "more groups for you than this gateway accepts" in refused.json()["message"]
        started = time.monotonic()
        assert ad_world.get("tenant1", "alice", gw).status_code == 200
        assert time.monotonic() - started < 2.0
        errors = gw.gateway.directory.metrics.directory_errors.labels("too_many")._value.get()
        assert errors == 1


@pytest.mark.slow
def test_flush_reaches_every_worker_of_vgate_serve(ad_world: ADWorld, tmp_path: Path) -> None:
    corp = ad_world.corp
    cfg = ad_world.config(flush_file=str(tmp_path / "flush"))
    cfg.update(workers=2, listen={"host": "127.0.0.1", "port": 0})
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "vgate.yaml")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    seeder = Seeder(corp.dc.admin())
    try:
        assert proc.stderr is not None
        watchdog = threading.Timer(30, proc.kill)  # a serve that never starts ends the wait
        watchdog.start()
        ports: list[int] = []
        while len(ports) < 2:  # one line per worker; EOF ends the loop if serve dies
            line = proc.stderr.readline()
            if not line:
                break
            if "vgate listening on" in line:
                ports.append(int(line.split(":")[-1].split()[0]))
        assert len(ports) == 2 and len(set(ports)) == 1, "two workers on one socket"
        watchdog.cancel()
        drain = threading.Thread(target=proc.stderr.read, daemon=True)
        drain.start()  # keep the pipe empty so no worker ever blocks on logging
        url = f"https://127.0.0.1:{ports.pop()}/clusters/tenant1/api/v1/namespaces"
        headers = {"Authorization": f"Bearer {ad_world.token('henry')}"}

        def codes(n: int = 30) -> set[int]:
            out = set()
            for _ in range(n):  # a new connection each time: any worker may answer
                out.add(httpx.get(url, headers=headers, verify=ad_world.tls()).status_code)
            return out

        assert codes() == {200}
        seeder.remove_members(corp.groups["sre-oncall"], [corp.users["henry"]])
        assert codes() == {200}  # cached in whichever workers answered
        done = vgate("directory", "flush", "--config", str(tmp_path / "vgate.yaml"))
        assert done.returncode == 0, done.stderr
        time.sleep(1.3)
        assert codes() == {403}
    finally:
        seeder.add_members(corp.groups["sre-oncall"], [corp.users["henry"]])
        seeder.conn.unbind()
        proc.terminate()
        proc.wait(30)
