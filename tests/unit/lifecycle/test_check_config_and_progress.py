"""check-config on the lifecycle section, and the progress display."""

from __future__ import annotations

import io
import sys

from gateway.lifecycle.progress import Progress, human_age
from tests.support.lifecycle.check_config import check


def test_check_config_reports_lifecycle_problems_by_key(tmp_path):
    (tmp_path / "values.yaml").write_text("- not a mapping\n")
    r = check(
        tmp_path,
        {
            "provisioner": "helm",
            "helm": {
                "binary": "vgate-no-such-helm",
                "values_file": "values.yaml",
                "namespace_prefix": "Bad",
                "pod_security": "loose",
            },
        },
    )
    assert r.returncode == 1
    assert "lifecycle.helm.namespace_prefix" in r.stderr
    assert "lifecycle.helm.pod_security" in r.stderr
    r = check(
        tmp_path,
        {
            "provisioner": "helm",
            "helm": {"binary": "vgate-no-such-helm", "values_file": "values.yaml"},
        },
    )
    assert r.returncode == 1
    assert "lifecycle.helm.binary: 'vgate-no-such-helm' not found on PATH" in r.stderr
    assert "lifecycle.helm.values_file:" in r.stderr and "must be a mapping" in r.stderr
    r = check(tmp_path, {"provisioner": "local", "local": {"assets_dir": str(tmp_path)}})
    assert r.returncode == 1 and f"{tmp_path}/kube-apiserver not found" in r.stderr
    (tmp_path / "kube-apiserver").write_text("")
    (tmp_path / "etcd").write_text("")
    r = check(
        tmp_path,
        {
            "provisioner": "local",
            "local": {"assets_dir": str(tmp_path)},
            "platform_admin_groups": ["platform"],
        },
    )
    assert r.returncode == 0, r.stderr  # a policy for a tenant not created yet is fine
    r = check(tmp_path, {"platform_admin_groups": ["system:masters"]})
    assert r.returncode == 1 and "system: names are refused" in r.stderr


def test_progress_plain_lines_and_live_line():
    out = io.StringIO()
    progress = Progress(out, live=False)
    progress.show({"name": "t1", "phase": "Provisioning", "step": "namespace"})
    progress.show({"name": "t1", "phase": "Provisioning", "step": "namespace"})
    progress.show(
        {
            "name": "t1",
            "phase": "Provisioning",
            "step": "ready",
            "last_error": "ready: not ready after 300s",
        }
    )
    progress.finish("t1: done")
    assert out.getvalue().splitlines() == [
        "t1: namespace",
        "t1: ready (retrying: ready: not ready after 300s)",
        "t1: done",
    ]
    live = io.StringIO()
    progress = Progress(live, live=True)
    progress.show({"name": "t1", "phase": "Provisioning", "step": "namespace"})
    progress.finish("t1: done")
    assert live.getvalue().startswith("\r\x1b[K| t1: namespace [")
    assert live.getvalue().endswith("\r\x1b[Kt1: done\n")
    assert [human_age(s) for s in (5, 125, 7300, 200000, None)] == ["5s", "2m", "2h", "2d", "-"]


def test_check_config_on_the_kubernetes_store(tmp_path):
    helm = {"binary": sys.executable}
    r = check(tmp_path, {"store_backend": "kubernetes", "provisioner": "local"})
    assert r.returncode == 1 and "use store_backend sqlite" in r.stderr
    r = check(tmp_path, {"store_backend": "kubernetes", "helm": helm})
    assert r.returncode == 1
    assert "lifecycle.store_namespace is not set and this is not a pod" in r.stderr
    r = check(
        tmp_path,
        {
            "store_backend": "kubernetes",
            "store_namespace": "vgate-system",
            "store_kubeconfig": "missing.yaml",
            "helm": helm,
        },
    )
    assert r.returncode == 1 and "lifecycle.store_kubeconfig: file not found" in r.stderr
