"""Fixtures for the chart tests: the real `helm` binary, or a skip that says how to get it."""

from __future__ import annotations

import pytest

from tests.deploy.chart import find_helm


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        pytest.skip("helm is not installed: run `python .ci/install_helm.py` (CI does) "
                    "or set HELM_BIN")
    return path
