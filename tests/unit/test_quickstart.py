"""The quickstart's first tenant from a kubeconfig, and its reusable serving certificate."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml

from gateway.kubeconfig_files import kubeconfig_paths
from gateway.quickstart.first_tenant import QuickstartError, tenant_from_kubeconfig
from gateway.quickstart.pki import serving_certificate


def _write(path: Path, user: dict, cluster: dict | None = None, **top) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [
                    {
                        "name": "k",
                        "cluster": cluster
                        or {
                            "server": "https://10.0.0.1:6443",
                            "certificate-authority-data": base64.b64encode(b"CA PEM").decode(),
                        },
                    }
                ],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                **top,
            }
        )
    )
    return path


def test_token_user(tmp_path: Path) -> None:
    kc = _write(tmp_path / "kc", {"token": "s3cret"})
    tenant, source = tenant_from_kubeconfig([kc], None, tmp_path / "out", name="local")
    assert tenant["upstream"] == "https://10.0.0.1:6443"
    assert Path(tenant["ca_file"]).read_bytes() == b"CA PEM"
    token_file = Path(tenant["token_file"])
    assert token_file.read_text() == "s3cret\n"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert source == 'context "c" (https://10.0.0.1:6443)'


def test_client_certificate_files_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    kc = _write(
        tmp_path / "kc",
        {"client-certificate": "certs/u.crt", "client-key-data": base64.b64encode(b"KEY").decode()},
        cluster={
            "server": "https://k.example:443",
            "insecure-skip-tls-verify": True,
            "tls-server-name": "kubernetes",
        },
    )
    tenant, _ = tenant_from_kubeconfig([kc], None, tmp_path / "out", name="local")
    assert tenant["client_cert_file"] == str(tmp_path / "certs" / "u.crt")
    assert Path(tenant["client_key_file"]).read_bytes() == b"KEY"
    assert tenant["insecure_skip_tls_verify"] is True
    assert tenant["server_name"] == "kubernetes"
    assert "ca_file" not in tenant


@pytest.mark.parametrize(
    ("user", "cluster", "needle"),
    [
        ({"exec": {"command": "aws"}}, None, "--upstream-token-file"),
        ({"auth-provider": {"name": "gcp"}}, None, "exec plugin or auth provider"),
        ({}, None, "neither a token nor a client certificate"),
        ({"token": "t"}, {"server": "https://rancher.example/k8s/clusters/c-1"}, "has a path"),
        ({"token": "t"}, {"server": "10.0.0.1:6443"}, "no usable server URL"),
        ({"token": "t"}, {"server": "https://a:1", "proxy-url": "http://p:3128"}, "proxy-url"),
        ({"token": "t"}, {"server": "https://a:1", "certificate-authority-data": "%%"}, "base64"),
    ],
)
def test_refusals_say_what_to_do(
    tmp_path: Path, user: dict, cluster: dict | None, needle: str
) -> None:
    kc = _write(tmp_path / "kc", user, cluster)
    with pytest.raises(QuickstartError) as info:
        tenant_from_kubeconfig([kc], None, tmp_path / "out", name="local")
    assert needle in str(info.value)


def test_context_selection_and_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _write(tmp_path / "a", {"token": "from-a"})
    second = _write(tmp_path / "b", {"token": "from-b"}, **{"current-context": "other"})
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    paths = kubeconfig_paths(None)
    assert paths == [first, tmp_path / "missing", second]
    tenant, _ = tenant_from_kubeconfig(paths, None, tmp_path / "out", name="t")
    assert Path(tenant["token_file"]).read_text() == "from-a\n"  # first file wins
    with pytest.raises(QuickstartError, match='context "nope" not found'):
        tenant_from_kubeconfig(paths, "nope", tmp_path / "out", name="t")
    with pytest.raises(QuickstartError, match="no current context"):
        tenant_from_kubeconfig([tmp_path / "missing"], None, tmp_path / "out", name="t")


def test_serving_certificate_is_reused_while_valid(tmp_path: Path) -> None:
    files = serving_certificate(tmp_path, ["127.0.0.1", "localhost"])
    ca = files.ca_file.read_bytes()
    assert files.key_file.stat().st_mode & 0o777 == 0o600
    assert serving_certificate(tmp_path, ["127.0.0.1"]).ca_file.read_bytes() == ca
    # a name the certificate lacks: a new one
    assert serving_certificate(tmp_path, ["10.1.1.1"]).ca_file.read_bytes() != ca


def test_envtest_first_tenant_goes_to_the_lifecycle_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from gateway.config import load_config
    from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
    from gateway.quickstart.run import Options, prepare
    from tests.support.oidc import free_port

    assets = tmp_path / "assets"
    assets.mkdir()
    for binary in ("kube-apiserver", "etcd"):  # never started here, only asked its version
        (assets / binary).write_text("#!/bin/sh\necho Kubernetes v1.28.7\n")
        (assets / binary).chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    prepared = prepare(Options(directory=tmp_path / "qs", port=free_port(), idp_port=free_port()))
    assert prepared.static_tenant is None
    assert str(assets) in prepared.tenant_source
    config = load_config(prepared.config_file)
    assert config.tenants == [] and config.lifecycle is not None
    assert config.lifecycle.provisioner == "local"

    async def stored() -> list[str]:
        store = SQLiteTenantStore(config.lifecycle.store)
        try:
            return [r.spec.name for r in await store.list()]
        finally:
            await store.close()

    assert asyncio.run(stored()) == ["local"]
    # a second run keeps the tenant (and the CA)
    prepare(Options(directory=tmp_path / "qs", port=free_port(), idp_port=free_port()))
    assert asyncio.run(stored()) == ["local"]


def test_banner_and_portal_offer_the_path_form_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`<tenant>.localhost` does not resolve for kubectl everywhere: the form that works on
    any machine (path prefix on 127.0.0.1) comes first, the hostname form says what DNS it
    needs; the banner says how the private CA is trusted and how to stop a killed run."""
    from gateway.config import load_config
    from gateway.portal.app import KubeconfigForms
    from gateway.quickstart.run import Options, banner, prepare
    from tests.support.oidc import free_port

    kc = _write(tmp_path / "kc", {"token": "t"})
    monkeypatch.setenv("KUBECONFIG", str(kc))
    port = free_port()
    prepared = prepare(Options(directory=tmp_path / "qs", port=port, idp_port=free_port()))
    lines = banner(prepared).splitlines()
    where = {
        key: next(i for i, line in enumerate(lines) if key in line)
        for key in (
            "/clusters/local",
            "https://local.localhost",
            "127.0.0.1 local.localhost",
            "try ",
            "Did your browser warn",
            "--stop",
        )
    }
    assert where["/clusters/local"] < where["https://local.localhost"]
    assert lines[where["/clusters/local"]].strip() == f"https://127.0.0.1:{port}/clusters/local"
    assert "/etc/hosts" in lines[where["127.0.0.1 local.localhost"]]
    assert (
        lines[where["--stop"]].strip().endswith(f"vgate quickstart --stop --dir {tmp_path / 'qs'}")
    )
    assert (
        "Ctrl-C stops the gateway, the IdP and every tenant's kube-apiserver and etcd"
        in lines[where["--stop"] - 1]
    )
    portal = load_config(prepared.config_file).portal
    assert portal is not None and portal.preferred_form == "path"
    forms = KubeconfigForms(portal.public_url, "localhost", "/clusters", portal.preferred_form)
    assert list(forms.servers("local").items()) == [
        ("path", f"https://127.0.0.1:{port}/clusters/local"),
        ("host", f"https://local.localhost:{port}"),
    ]
    assert "`*.localhost`" in (forms.dns_note() or "")
    host_first = KubeconfigForms(portal.public_url, "localhost", "/clusters")
    assert list(host_first.servers("local")) == ["host", "path"]
    assert host_first.dns_note() is None


def test_no_cluster_at_all_says_both_ways_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.quickstart.run import Options, prepare
    from tests.support.oidc import free_port

    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path / "none"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    with pytest.raises(QuickstartError) as info:
        prepare(Options(directory=tmp_path / "qs", port=free_port(), idp_port=free_port()))
    assert "no current context" in str(info.value) and "--envtest" in str(info.value)


def _fake_npm(bin_dir: Path, log: Path, seconds: float) -> None:
    """An `npm` that takes `seconds`, logs its directory and leaves what `npm ci` leaves."""
    bin_dir.mkdir()
    for name in ("node", "npm"):
        tool = bin_dir / name
        tool.write_text(
            "#!/bin/sh\n"
            f'echo "$PWD" >> {log}\n'
            f"sleep {seconds}\n"
            "mkdir -p node_modules/oidc-provider\n"
            "echo {} > node_modules/oidc-provider/package.json\n"
        )
        tool.chmod(0o755)


def _idp_dir(path: Path) -> Path:
    path.mkdir()
    (path / "server.mjs").write_text("// the dev IdP\n")
    (path / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    return path


def test_npm_ci_waits_for_the_same_checkout_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two starts from one checkout run `npm ci` once (the second waits, then finds it
    done); a start from another checkout (a clone, a worktree) does not wait for it."""
    import threading
    import time

    from gateway.quickstart.dev_idp import NPM_LOCK, ensure_node_modules

    log = tmp_path / "npm.log"
    _fake_npm(tmp_path / "bin", log, 1.5)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    one, other = _idp_dir(tmp_path / "one"), _idp_dir(tmp_path / "other")
    started = time.monotonic()
    threads = [threading.Thread(target=ensure_node_modules, args=(d,)) for d in (one, one, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    elapsed = time.monotonic() - started
    runs = log.read_text().split()
    assert sorted(runs) == sorted([str(one), str(other)])  # once per checkout
    assert elapsed < 2.9, f"the other checkout waited for the first one's npm ci ({elapsed:.1f}s)"
    ensure_node_modules(one)  # fresh now: no npm at all
    assert len(log.read_text().split()) == 2
    # the lock stays with its checkout: nothing piles up in the shared temporary directory
    assert (one / NPM_LOCK).is_file() and (other / NPM_LOCK).is_file()
