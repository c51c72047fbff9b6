"""The integration tier: real components (kubectl, the npm oidc-provider, a Samba AD DC,
Chromium, helm, nginx and wrk) around a gateway, with real kube-apiservers as tenants
(`tests/support/kubectl_world.py` builds the shared world). Every test under this folder is
marked `integration`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "integration")
