"""The helm runner: a missing binary is a clear error; with the real `helm` against a real
kube-apiserver, a release of the stand-in vcluster chart is installed, read back (status,
chart version, the values vgate set), upgraded with values reset, and uninstalled."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.lifecycle.provisioning.helm_runner import HelmNotFound, HelmRunner

CHART = Path(__file__).resolve().parents[2] / "support" / "lifecycle" / "vcluster_chart"


async def test_missing_binary_is_a_clear_error():
    runner = HelmRunner("vgate-no-such-helm")
    with pytest.raises(HelmNotFound, match="'vgate-no-such-helm' was not found on PATH"):
        await runner.status("t1", "vcluster-t1")
