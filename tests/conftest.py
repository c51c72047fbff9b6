"""Fixtures shared by every tier, and the one rule about tiers: the folder a test lives in
(`unit/`, `integration/`, `e2e/`) is its tier, set by that folder's conftest.py; the kubelet
stand-in's own tests (`fakekube/`) carry theirs explicitly. A test with no tier or two fails
collection, so `pytest -m unit` runs exactly the in-process tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.craft import CraftingIssuer
from tests.support.scripted import ScriptedUpstream
from tests.support.tiers import TIERS


@pytest.fixture(scope="module")
def issuer() -> Iterator[CraftingIssuer]:
    """A JWKS issuer whose tokens the test signs itself (one per test module)."""
    iss = CraftingIssuer().start()
    yield iss
    iss.down()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    """A scripted upstream recording the request heads that reach it (one per module)."""
    up = ScriptedUpstream()
    yield up
    up.stop()


#: Fixtures of the shared worlds, registered once so every tier gets the same session-scoped
#: instances (one Samba DC, one host API server per kind, one kubectl world per session).
pytest_plugins = [
    "tests.support.kubectl_world",
    "tests.support.directory.corp",
    "tests.support.lifecycle.fixtures",
    "tests.support.deploy.fixtures",
]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = []
    for item in items:
        tiers = [t for t in TIERS if item.get_closest_marker(t)]
        if len(tiers) != 1:
            wrong.append(f"{item.nodeid}: tiers {tiers or 'none'}")
    if wrong:
        raise pytest.UsageError(
            "every test needs exactly one tier (move it into tests/unit, tests/integration or "
            "tests/e2e):\n  " + "\n  ".join(wrong[:20])
        )
