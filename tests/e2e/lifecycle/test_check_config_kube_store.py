"""check-config on the lifecycle section, and the progress display."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def check(tmp_path: Path, lifecycle: dict) -> subprocess.CompletedProcess:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "later.yaml").write_text(
        yaml.safe_dump({"tenant": "not-yet-created", "roles": {"view": {"groups": ["devs"]}}})
    )
    config = {
        "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]},
        "policies": str(tmp_path / "policies"),
        "lifecycle": lifecycle,
    }
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(tmp_path / "vgate.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_reads_the_kubernetes_store(
    tmp_path, host_namespace, store_kubeconfig, tenant_crd
):
    """check-config lists the Tenant objects with the gateway's own credential (the chart's
    RBAC) on a real API server, and names the refusal when that credential is wrong."""
    lifecycle = {
        "store_backend": "kubernetes",
        "store_namespace": host_namespace,
        "store_kubeconfig": str(store_kubeconfig),
        "helm": {"binary": sys.executable},
    }
    r = check(tmp_path, lifecycle)
    assert r.returncode == 0, r.stderr
    (tmp_path / "wrong.yaml").write_text(tenant_crd.kubeconfig_text("wrong-token"))
    r = check(tmp_path, {**lifecycle, "store_kubeconfig": str(tmp_path / "wrong.yaml")})
    assert r.returncode == 1
    assert (
        f"lifecycle store: cannot read Tenant objects in namespace '{host_namespace}': " in r.stderr
        and "Unauthorized" in r.stderr
    ), r.stderr
