"""Fixtures shared by the test modules that run a gateway against local stand-ins, and the
tier of every test: a test marked neither `integration` nor `e2e` is a `unit` test, so
`pytest -m unit` runs exactly the in-process tier."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.craft import CraftingIssuer
from tests.support.scripted import ScriptedUpstream


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


_TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in _TIERS):
            item.add_marker(pytest.mark.unit)
