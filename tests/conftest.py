"""Fixtures shared by the test modules that run a gateway against local stand-ins."""

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
