"""`vgate quickstart` end to end: one command, a kubeconfig's cluster as first tenant, the
local IdP, and real kubectl logging in through `vgate login`."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from tests.fakekube import Caller, FakeKube
from tests.support.oidc import free_port
from tests.support.pki import TestCA
from tests.support.sso_world import KUBECTL, REPO_ROOT, missing_tools, plugin_commands
from tests.support.tiers import tool_missing


def _lines(stream, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put(line)
    out.put(None)


def test_quickstart_one_command(tmp_path: Path) -> None:
    why = missing_tools()
    if why:
        tool_missing(why)
    ca = TestCA(tmp_path / "pki")
    fake = FakeKube(
        name="mine",
        tokens={
            "kube-admin-token": Caller(
                user="kubernetes-admin", groups=("system:masters",), may_impersonate=True
            )
        },
        tls=ca.issue("mine", ["127.0.0.1"]),
    ).start()
    user_kubeconfig = tmp_path / "user-kubeconfig"
    user_kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "mine",
                "clusters": [
                    {
                        "name": "mine",
                        "cluster": {"server": fake.url, "certificate-authority": str(ca.cert_file)},
                    }
                ],
                "users": [{"name": "admin", "user": {"token": "kube-admin-token"}}],
                "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "admin"}}],
            }
        )
    )
    bin_dir = plugin_commands(tmp_path / "bin")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "KUBECONFIG": str(user_kubeconfig),
    }
    work = tmp_path / "qs"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "quickstart",
            "--dir",
            str(work),
            "--port",
            str(port),
            "--idp-port",
            str(free_port()),
            "--bind-roles",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    seen: list[str] = []
    try:
        while not any("stop      Ctrl-C" in line for line in seen):
            line = lines.get(timeout=60)
            assert line is not None, "quickstart exited early:\n" + "".join(seen)
            seen.append(line)
        output = "".join(seen)
        assert (
            "applied ClusterRoleBinding vgate-cluster-admin: group vgate:cluster-admin → "
            "ClusterRole cluster-admin"
        ) in output
        binding = fake.get("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "vgate-view", "")
        assert binding["roleRef"]["name"] == "view"
        assert binding["subjects"][0]["name"] == "vgate:view"
        assert f"https://127.0.0.1:{port}/clusters/local" in output
        kubeconfig = work / "kubeconfig"
        assert f"KUBECONFIG={kubeconfig} kubectl auth whoami" in output
        # the person at the browser signs in as alice through the IdP's forms
        kubectl_env = {
            **env,
            "KUBECONFIG": str(kubeconfig),
            "BROWSER": str(bin_dir / "test-browser"),
            "VGATE_TEST_USER": "alice",
            "VGATE_TEST_PASSWORD": "alice",
            "VGATE_CACHE_DIR": str(tmp_path / "cache"),
            "VGATE_LOGIN_PORTS": "0",
            "DISPLAY": "",
            "WAYLAND_DISPLAY": "",
        }
        r = subprocess.run(
            [KUBECTL, "auth", "whoami", "-o", "json"],
            env=kubectl_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)["status"]["userInfo"]
        assert info["username"] == "oidc:alice@example.com"
        assert "vgate:cluster-admin" in info["groups"]
        # the gateway reached the cluster with the kubeconfig's credential, impersonating
        record = [r for r in fake.records if b"selfsubjectreviews" in r.target][-1]
        sent = {n.lower(): v for n, v in record.headers}
        assert sent[b"authorization"] == b"Bearer kube-admin-token"
        assert sent[b"impersonate-user"] == b"oidc:alice@example.com"
        # credential files the quickstart wrote are private
        for path in (work / "pki" / "gateway.key", work / "portal-client-secret"):
            assert path.stat().st_mode & 0o077 == 0, path
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
        fake.stop()
    assert code == 0
    # the local IdP went away with it
    log = (work / "idp.log").read_text()
    assert "ready http://127.0.0.1" in log
