"""The helm runner: a missing binary is a clear error; with the real `helm` against a real
kube-apiserver, a release of the stand-in vcluster chart is installed, read back (status,
chart version, the values vgate set), upgraded with values reset, and uninstalled."""

from __future__ import annotations

import shutil
import time
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
    status = await runner.status("t1", ns)
    assert abs(status.pop("deployed_at") - time.time()) < 120  # helm's deployedAt
    assert status == {
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


async def test_a_release_left_pending_by_a_killed_helm_is_repaired(
    kube_host, tmp_path, monkeypatch
):
    """The manager killed while its `helm upgrade --install` runs (the pod gone, or the helm
    timed out): helm leaves the release "pending-install" (or "pending-upgrade") and refuses
    every later upgrade, "another operation (install/upgrade/rollback) is in progress", so
    the tenant stayed half-created for good. While young the pending state is a readable
    step failure (someone may still be at work); once stale the `vcluster-release` step
    uninstalls a pending first install, rolls back a pending upgrade, and installs again."""
    import signal
    import subprocess
    import uuid

    from gateway.lifecycle.credentials.files import CredentialFiles
    from gateway.lifecycle.kube import LightkubeAPI
    from gateway.lifecycle.model import TenantSpec
    from gateway.lifecycle.provisioning.helm import HelmProvisioner, HelmSettings
    from gateway.lifecycle.steps import StepFailed

    helm = shutil.which("helm")
    assert helm is not None
    for what in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"HELM_{what}_HOME", str(tmp_path / what.lower()))
    name = f"t{uuid.uuid4().hex[:8]}"
    ns = f"hp-{name}"
    kube_host.kubectl("create", "namespace", ns)
    where = ["-n", ns, "--kubeconfig", str(kube_host.kubeconfig)]

    def killed_mid(*args: str) -> None:
        """helm waiting for a StatefulSet no kubelet will ever run, SIGKILLed."""
        proc = subprocess.Popen([helm, *args, "--wait", "--timeout", "120s", *where])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = subprocess.run(
                [helm, "status", name, *where], capture_output=True, text=True
            ).stdout
            if "STATUS: pending-" in status:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    runner = HelmRunner(helm, kubeconfig=str(kube_host.kubeconfig))
    host = LightkubeAPI.from_path(kube_host.kubeconfig)
    settings = HelmSettings(chart=str(CHART), repo=None, namespace_prefix="hp-")
    provisioner = HelmProvisioner(host, runner, None, CredentialFiles(tmp_path / "c"), settings)
    spec = TenantSpec(name=name, admin_groups=["a"])
    (release,) = [s for s in provisioner.up(spec) if s.name == "vcluster-release"]
    try:
        killed_mid("install", name, str(CHART))
        assert (await runner.status(name, ns))["status"] == "pending-install"
        with pytest.raises(StepFailed, match=rf"{name} in {ns} is pending-install for \d+s"):
            await release.run()  # young: perhaps another helm is still at work
        settings.stale_pending_seconds = 0.0
        assert not await release.done()
        await release.run()
        assert await release.done() and (await runner.status(name, ns))["status"] == "deployed"

        killed_mid("upgrade", name, str(CHART), "--set", "extra=1")
        assert (await runner.status(name, ns))["status"] == "pending-upgrade"
        assert not await release.done()
        await release.run()
        assert await release.done() and (await runner.status(name, ns))["status"] == "deployed"
    finally:
        await runner.uninstall(name, ns)
        await host.close()
