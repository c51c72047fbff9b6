"""The helm runner: a missing binary is a clear error; with the real `helm` against a real
kube-apiserver, a release of the stand-in vcluster chart is installed, read back (status,
chart version, the values vgate set), upgraded with values reset, and uninstalled."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.lifecycle.provisioning.helm_runner import HelmError, HelmRunner

CHART = Path(__file__).resolve().parents[2] / "support" / "lifecycle" / "vcluster_chart"


async def test_install_read_upgrade_uninstall_with_the_real_helm(
    kube_host, host_namespace, tmp_path, monkeypatch
):
    helm = shutil.which("helm")
    assert helm is not None, "the helm binary is part of the test world (.ci installs it)"
    for what in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"HELM_{what}_HOME", str(tmp_path / what.lower()))
    runner = HelmRunner(helm, kubeconfig=str(kube_host.kubeconfig))
    ns = host_namespace
    assert await runner.status("t1", ns) is None
    values = {
        "controlPlane": {"statefulSet": {"highAvailability": {"replicas": 3}}},
        "extra": {"kept": "until reset"},
    }
    await runner.upgrade_install("t1", ns, str(CHART), "0.26.0", values, None)
    assert await runner.status("t1", ns) == {
        "status": "deployed",
        "chart_version": "0.26.0",
        "values": values,
    }
    sts = kube_host.kubectl(
        "-n", ns, "get", "statefulset", "t1", "-o", "jsonpath={.spec.replicas}"
    ).stdout
    assert sts == "3"
    # an upgrade sets exactly the values given (--reset-values): nothing left from before
    fewer = {"controlPlane": {"statefulSet": {"highAvailability": {"replicas": 1}}}}
    await runner.upgrade_install("t1", ns, str(CHART), "0.26.0", fewer, None)
    assert (await runner.status("t1", ns))["values"] == fewer
    with pytest.raises(HelmError, match=r"helm upgrade --install broken: .*no-such-chart"):
        await runner.upgrade_install("broken", ns, str(tmp_path / "no-such-chart"), None, {}, None)
    await runner.uninstall("t1", ns)
    await runner.uninstall("t1", ns)  # already gone: fine
    assert await runner.status("t1", ns) is None
    gone = kube_host.kubectl("-n", ns, "get", "statefulset", "t1", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
