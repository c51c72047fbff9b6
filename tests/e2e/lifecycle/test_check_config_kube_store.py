"""check-config on the kubernetes tenant store of a real API server."""

from __future__ import annotations

import sys

from tests.support.lifecycle.check_config import check


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
