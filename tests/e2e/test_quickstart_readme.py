"""The README's quickstart, as a newcomer meets it: a fresh clone, a fresh HOME, no
kubeconfig, the real kube-apiserver and etcd from $KUBEBUILDER_ASSETS (the first tenant is
started by the lifecycle's `local` provisioner), the printed "try" command run by real
kubectl whose `vgate login` signs in through Debian's Chromium, and the portal in Chromium
in each tenant state — Ready, Failing (a step that really fails), Provisioning (held at its
etcd step) and Paused — with a screenshot of each in tests/artifacts/.

`pip install -e .` is played by a `vgate` command on PATH that runs the clone's package
(`python -m gateway` with PYTHONPATH=the clone): that is what the editable install gives, and
it leaves the machine's own editable install (other checkouts use it) alone; a venv with
--system-site-packages would need ~10 s and setuptools from an index to install.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.quickstart.processes import running
from tests.e2e.conftest import until
from tests.support.chromium import ARTIFACTS, launch, sign_in_at_idp
from tests.support.oidc import free_port
from tests.support.quickstart_proc import (
    Quickstart,
    banner_field,
    quickstart_env,
    require_tools,
    tenant_status,
)
from tests.support.sso_world import KUBECTL, REPO_ROOT

pytestmark = [pytest.mark.slow]


def readme_command() -> str:
    """The README's quickstart command (its first `sh` block under "The two commands")."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0].strip()


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"quickstart-portal-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def _state(page, tenant: str) -> tuple[str, str]:
    detail = page.query_selector(f"#state-detail-{tenant}")
    return (page.inner_text(f"#state-{tenant}"), detail.inner_text() if detail is not None else "")


def _shown(page, tenant: str, label: str) -> tuple[str, str]:
    """The portal page once it shows `tenant` as `label` (the gateway's route sync follows
    the store within a poll)."""

    def check():
        page.reload()
        return (
            page.query_selector(f"#state-{tenant}") is not None and _state(page, tenant)[0] == label
        )

    until(check, 30, f"the portal to show {tenant} {label}")
    return _state(page, tenant)


def test_readme_quickstart_from_a_fresh_clone(tmp_path: Path) -> None:
    require_tools(browser=True)
    command = readme_command()
    assert command == "pip install -e . && vgate quickstart", command
    clone = tmp_path / "vgate"
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(clone)], check=True, timeout=60)
    assert not (clone / "deploy" / "dev-idp" / "node_modules").exists()
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # `pip install -e .` in the clone: a `vgate` command running the clone's package
    vgate = _script(
        bin_dir / "vgate",
        f'PYTHONPATH={shlex.quote(str(clone))} exec {sys.executable} -m gateway "$@"',
    )
    browser = _script(
        bin_dir / "chromium-user",
        f"PYTHONPATH={shlex.quote(str(REPO_ROOT))} exec {sys.executable} "
        '-m tests.support.chromium_user "$@"',
    )
    env = quickstart_env(
        home,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        # the person at the browser; a shared machine: any free loopback port for the redirect
        BROWSER=str(browser),
        DISPLAY="",
        WAYLAND_DISPLAY="",
        VGATE_TEST_USER="alice",
        VGATE_TEST_PASSWORD="alice",
        VGATE_LOGIN_PORTS="0",
        npm_config_prefer_offline="true",
    )
    env.pop("PYTHONPATH", None)
    port, idp_port = free_port(), free_port()
    # the README's command, on free ports (others share this machine)
    qs = Quickstart(
        ["--port", str(port), "--idp-port", str(idp_port)],
        cwd=clone,
        env=env,
        command=[str(vgate), "quickstart"],
    )
    work = home / ".vgate" / "quickstart"
    etcd_stopped: int | None = None
    try:
        banner = qs.banner(timeout=300)  # the first run installs the IdP (npm ci)
        print(banner)
        assert banner_field(banner, "config") == str(work / "vgate.yaml")
        gateway = f"https://127.0.0.1:{port}"
        tenant_lines = banner.split("  tenant ", 1)[1]
        assert tenant_lines.index(f"{gateway}/clusters/local") < tenant_lines.index(
            "https://local.localhost"
        )
        try_command = banner_field(banner, "try")
        assert try_command == f"KUBECONFIG={work / 'kubeconfig'} kubectl auth whoami"

        # the printed "try": kubectl → vgate login → Chromium signs in at the IdP; the tenant
        # may still be starting (503 + Retry-After: kubectl waits for it)
        r = subprocess.run(
            ["sh", "-c", try_command], env=env, capture_output=True, text=True, timeout=240
        )
        assert r.returncode == 0, r.stderr + qs.output
        assert re.search(r"Username\s+oidc:alice@example.com", r.stdout), r.stdout
        assert "vgate:cluster-admin" in r.stdout
        assert "vgate: a browser opened to sign you in" in r.stderr

        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            context = launch(
                pw,
                tmp_path / "profile",
                ignore_https_errors=True,
                viewport={"width": 1100, "height": 900},
            )
            try:
                page = context.new_page()
                page.set_default_timeout(30000)
                page.goto(gateway + "/")
                sign_in_at_idp(page, f"http://127.0.0.1:{idp_port}", "alice", "alice")
                page.wait_for_url(gateway + "/")

                # Ready: the path form first, the hostname form with what DNS it needs
                assert _state(page, "local") == ("Ready", "")
                assert page.eval_on_selector_all(
                    "#tenant-local a.button", "els => els.map(e => e.id)"
                ) == ["download-local-path", "download-local-host"]
                assert f"{gateway}/clusters/local" in page.text_content("#tenant-local pre.bash")
                assert "/etc/hosts" in page.inner_text("#dns-note")
                _shot(page, "ready")

                # Failing: a step that really fails (a file where its folder must go)
                (work / "local" / "tenants").mkdir(parents=True, exist_ok=True)
                (work / "local" / "tenants" / "broken").write_text("in the way\n")
                _tenant(
                    env, vgate, work, "create", "broken", "--admin-group", "oidc:platform-admins"
                )
                status = until(lambda: _failed(work, "broken"), 90, "broken failing")
                _, detail = _shown(page, "broken", "Failing")
                assert f'Provisioning, step "{status.step}"; failed' in detail, detail
                # the error names the host's paths: its users see only a reference to it
                assert str(work) in status.last_error
                assert f"error reference {status.error_reference}" in detail
                assert str(work) not in page.content()
                _shot(page, "failed")
                # kubectl says so (not "the selfsubjectreviews API is not enabled")
                broken = tmp_path / "kubeconfig-broken"
                broken.write_text(
                    (work / "kubeconfig").read_text().replace("/clusters/local", "/clusters/broken")
                )
                r = subprocess.run(
                    [KUBECTL, "--kubeconfig", str(broken), "auth", "whoami"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert r.returncode == 1
                assert (
                    'Error from server (ServiceUnavailable): tenant "broken" is not ready '
                    f'(Provisioning, step "{status.step}"; failed'
                ) in r.stderr, r.stderr
                assert str(work) not in r.stderr

                # Provisioning: a new tenant held at its first step (the shared etcd stopped)
                etcd_stopped = next(s.pid for s in running(work) if s.what == "etcd")
                os.kill(etcd_stopped, signal.SIGSTOP)
                _tenant(
                    env, vgate, work, "create", "second", "--admin-group", "oidc:platform-admins"
                )
                until(
                    lambda: _status(work, "second", "step") == "etcd", 60, "second at its etcd step"
                )
                _, detail = _shown(page, "second", "Provisioning")
                assert detail.startswith('Provisioning, step "etcd". kubectl answers'), detail
                _shot(page, "provisioning")
                os.kill(etcd_stopped, signal.SIGCONT)
                etcd_stopped = None

                # Paused: the first request wakes it
                _tenant(env, vgate, work, "pause", "local")
                until(lambda: _status(work, "local", "phase") == "Paused", 90, "local paused")
                _, detail = _shown(page, "local", "Paused")
                assert "first request wakes it" in detail, detail
                _shot(page, "paused")
            finally:
                context.close()

        # the "try" command again: kubectl's request wakes the paused tenant
        r = subprocess.run(
            ["sh", "-c", try_command], env=env, capture_output=True, text=True, timeout=240
        )
        assert r.returncode == 0, r.stderr
        assert "oidc:alice@example.com" in r.stdout

        # Ctrl-C: nothing it started is left
        started = running(work)
        assert qs.stop(signal.SIGINT) == 0, qs.output
        assert "vgate quickstart: stopped kube-apiserver of tenant" in qs.output
        assert running(work) == [], started
    finally:
        if etcd_stopped is not None:
            os.kill(etcd_stopped, signal.SIGCONT)
        qs.kill()
        subprocess.run(
            [str(vgate), "quickstart", "--stop"], env=env, timeout=120, capture_output=True
        )


def _status(work: Path, name: str, field: str) -> str | None:
    status = tenant_status(work, name)
    return None if status is None else str(getattr(status, field))


def _failed(work: Path, name: str):
    status = tenant_status(work, name)
    return status if status is not None and status.last_error else None


def _tenant(env: dict[str, str], vgate: Path, work: Path, *args: str) -> None:
    r = subprocess.run(
        [str(vgate), "tenant", "--config", str(work / "vgate.yaml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
