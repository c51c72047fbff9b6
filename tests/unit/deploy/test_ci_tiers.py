"""In CI (VGATE_REQUIRE_E2E=1) the chart tests run or fail, never skip: a missing helm or
kube-apiserver is a broken machine there. Elsewhere they skip, saying how to get the binary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.deploy.chart import require_helm
from tests.support.kube import require_kube


@pytest.fixture
def no_binaries(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HELM_BIN", str(tmp_path / "helm"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))


@pytest.mark.usefixtures("no_binaries")
@pytest.mark.parametrize(
    "require", [require_helm, lambda: require_kube(kubectl=True)], ids=["helm", "kube-apiserver"]
)
def test_a_missing_binary_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, require: Callable[[], object]
) -> None:
    monkeypatch.delenv("VGATE_REQUIRE_E2E", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"install_helm\.py|KUBEBUILDER_ASSETS"):
        require()
    monkeypatch.setenv("VGATE_REQUIRE_E2E", "1")
    with pytest.raises(pytest.fail.Exception, match="VGATE_REQUIRE_E2E=1 but"):
        require()
