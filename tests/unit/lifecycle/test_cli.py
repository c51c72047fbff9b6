"""`vgate tenant ...`: subprocesses for the plain commands, in-process for `--wait`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from gateway import cli
from gateway.identity import Identity
from gateway.lifecycle import assemble
from gateway.lifecycle.admin_api import admin_app, platform_admin_check
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.helm import HelmProvisioner, HelmSettings
from gateway.lifecycle.stores.protocol import TenantExists, TenantNotFound
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from gateway.lifecycle.tenant_client import ApiClient, Invalid
from tests.support.lifecycle.fakes import FakeHelm, FakeHost, World, connector

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "token").write_text("t\n")
    config = {
        "routing": {"base_domain": "k8s.example.com", "path_prefix": "/clusters"},
        "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]},
        "tenants": [{"name": "static1", "upstream": "https://10.0.0.1", "token_file": "token"}],
        "lifecycle": {
            "store": "state/tenants.db",
            "credentials_dir": "state/credentials",
            "public_url": "https://vgate.example.com",
        },
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def vgate(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "tenant", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_commands_messages_and_exit_codes(config_file, tmp_path):
    (tmp_path / "extra.yaml").write_text("sync:\n  toHost:\n    ingresses:\n      enabled: true\n")
    r = vgate(
        config_file,
        "create",
        "t1",
        "--admin-group",
        "CN=admins,DC=corp",
        "--quota",
        "cpu=10,memory=20Gi,pods=50",
        "--isolate",
        "--k8s-version",
        "1.31",
        "--values",
        str(tmp_path / "extra.yaml"),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'tenant "t1" created; follow it with: vgate tenant show t1\n'
    r = vgate(config_file, "create", "t1", "--admin-group", "x")
    assert (r.returncode, r.stderr) == (3, 'vgate tenant: tenant "t1" already exists\n')
    r = vgate(config_file, "create", "static1", "--admin-group", "x")
    assert r.returncode == 1 and "configured statically" in r.stderr
    r = vgate(config_file, "create", "t2", "--admin-group", "x", "--quota", "cpu=lots")
    assert r.returncode == 2 and "quota: " in r.stderr
    r = vgate(config_file, "create", "Bad", "--admin-group", "x", "--k8s-version", "one")
    assert r.returncode == 2
    assert "name: must be a DNS label" in r.stderr
    assert "k8s_version: 'one' is not a Kubernetes version like 1.32" in r.stderr
    r = vgate(config_file, "create", "t2", "--admin-group", "x", "--k8s-version", "1.29")
    assert r.returncode == 2
    assert "k8s_version: Kubernetes 1.29 is not available here (available: 1.30" in r.stderr
    r = vgate(config_file, "list")
    assert r.returncode == 0
    header, row = r.stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "HOSTNAME", "VERSION", "AGE", "LAST", "ACTIVITY"]
    assert row.split()[:2] == ["t1", "Pending"] and "→1.31" in row  # nothing runs yet
    r = vgate(config_file, "show", "t1")
    shown = yaml.safe_load(r.stdout)
    assert shown["spec"]["quota"] == {"cpu": "10", "memory": "20Gi", "pods": "50"}
    assert shown["spec"]["values"] == {"sync": {"toHost": {"ingresses": {"enabled": True}}}}
    assert shown["servers"] == ["https://vgate.example.com/clusters/t1"]
    assert vgate(config_file, "pause", "t1").returncode == 0
    assert yaml.safe_load(vgate(config_file, "show", "t1").stdout)["desired"] == "paused"
    r = vgate(config_file, "upgrade", "t1", "--k8s-version", "1.33")
    assert r.returncode == 1 and "one minor version at a time" in r.stderr
    r = vgate(config_file, "create", "t3", "--admin-group", "x", "--token-passthrough")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(vgate(config_file, "show", "t3").stdout)["spec"]["token_passthrough"]
    r = vgate(config_file, "create", "t4", "--admin-group", "x", "--service-account-issuer", "i")
    assert r.returncode == 2
    assert "service_account_issuer: applies only with token_passthrough" in r.stderr
    r = vgate(
        config_file, "token-passthrough", "t3", "--on", "--service-account-issuer", "https://k"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'tenant "t3" token passthrough on; follow it with: vgate tenant show t3\n'
    spec = yaml.safe_load(vgate(config_file, "show", "t3").stdout)["spec"]
    assert (spec["token_passthrough"], spec["service_account_issuer"]) == (True, "https://k")
    assert vgate(config_file, "token-passthrough", "t3", "--off").returncode == 0
    spec = yaml.safe_load(vgate(config_file, "show", "t3").stdout)["spec"]
    assert (spec["token_passthrough"], spec["service_account_issuer"]) == (False, None)
    r = vgate(config_file, "delete", "ghost")
    assert (r.returncode, r.stderr) == (4, 'vgate tenant: tenant "ghost" not found\n')
    r = vgate(config_file, "show", "ghost")
    assert r.returncode == 4


def test_a_damaged_store_file_is_one_line_and_exit_1(config_file, tmp_path):
    """A store file that is not a database (or cannot be written): the reason and the file in
    one line, exit 1; it used to be a Python traceback."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "tenants.db").write_bytes(b"not a database, really" * 400)
    r = vgate(config_file, "list")
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        f"vgate tenant: tenant store {tmp_path / 'state' / 'tenants.db'}: file is not a database\n"
    )


def test_wait_follows_steps_and_reconciles_when_no_gateway_manages(
    config_file, monkeypatch, capsys
):
    world = World()

    def fake_provisioner(config):
        lc = config.lifecycle
        return HelmProvisioner(
            FakeHost(world),
            FakeHelm(world),
            connector(world),
            CredentialFiles(lc.credentials_dir),
            HelmSettings(poll_seconds=0.0, ready_timeout=0.1),
        )

    monkeypatch.setattr(assemble, "build_provisioner", fake_provisioner)
    args = ["tenant", "--config", str(config_file)]
    assert cli.main([*args, "create", "t1", "--admin-group", "admins", "--wait"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "t1: Pending" or out[0].startswith("t1: ")
    steps = [line.split(": ", 1)[1] for line in out if line.startswith("t1: ")]
    for step in ("namespace", "vcluster-release", "tenant-rbac", "gateway-token", "register-route"):
        assert step in steps
    assert out[-1] == 'tenant "t1" ready'
    assert cli.main([*args, "pause", "t1", "--wait"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'tenant "t1" paused'
    assert cli.main([*args, "upgrade", "t1", "--k8s-version", "1.33", "--wait"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'tenant "t1" paused'
    release = world.releases[("vcluster-t1", "t1")]["values"]
    assert release["controlPlane"]["distro"]["k8s"]["image"]["tag"].startswith("v1.32.")
    assert cli.main([*args, "resume", "t1", "--wait"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'tenant "t1" ready'
    release = world.releases[("vcluster-t1", "t1")]["values"]
    assert release["controlPlane"]["distro"]["k8s"]["image"]["tag"].startswith("v1.33.")
    assert cli.main([*args, "delete", "t1", "--wait"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == 'tenant "t1" deleted'
    assert world.objects == {}


def test_wait_stops_when_a_step_keeps_failing_with_the_same_error(config_file, monkeypatch, capsys):
    """`--wait` gives up (exit 1, the error printed) after the same error three passes in a
    row instead of spinning until --timeout. The failure is injected: a namespace of the
    tenant's name that vgate does not own."""
    world = World()
    world.objects[("v1", "Namespace", "", "vcluster-t1")] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "vcluster-t1"},
    }

    def fake_provisioner(config):
        return HelmProvisioner(
            FakeHost(world),
            FakeHelm(world),
            connector(world),
            CredentialFiles(config.lifecycle.credentials_dir),
            HelmSettings(poll_seconds=0.0, ready_timeout=0.1),
        )

    monkeypatch.setattr(assemble, "build_provisioner", fake_provisioner)
    code = cli.main(
        [
            "tenant",
            "--config",
            str(config_file),
            "create",
            "t1",
            "--admin-group",
            "admins",
            "--wait",
            "--timeout",
            "60",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert err == (
        "vgate tenant: tenant t1: 3 attempts in a row failed with the same error: "
        "namespace: namespace vcluster-t1 exists and is not managed by vgate for "
        "tenant t1; refusing to touch it (the lifecycle manager retries it; see "
        "vgate tenant show t1)\n"
    )
    assert out.splitlines()[-1] == "t1: failing"


async def test_api_client_maps_errors(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")

    async def authenticate(token):
        return Identity("root", "1", ("ops",), "https://idp", 0.0)

    app = admin_app(
        TenantOperations(store),
        authenticate=authenticate,
        is_platform_admin=platform_admin_check(["ops"], []),
    )
    client = ApiClient("http://vgate", "tok")
    await client.http.aclose()
    client.http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://vgate/admin",
        headers={"Authorization": "Bearer tok"},
    )
    created = await client.create({"name": "t1", "admin_groups": ["a"]})
    assert created["phase"] == "Pending"
    with pytest.raises(TenantExists):
        await client.create({"name": "t1", "admin_groups": ["a"]})
    with pytest.raises(TenantNotFound):
        await client.delete("ghost")
    with pytest.raises(Invalid) as info:
        await client.create({"name": "t2", "admin_groups": [], "ha": 2})
    assert {field for field, _ in info.value.causes} == {"admin_groups", "ha"}
    assert [t["name"] for t in await client.list()] == ["t1"]
    await client.close()
    await store.close()
