"""What a test does when a tool it needs is not on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """`.ci/run` installed every tool and set VGATE_REQUIRE_E2E=1: nothing may skip."""
    return os.environ.get("VGATE_REQUIRE_E2E") == "1"


def tool_missing(why: str) -> NoReturn:
    """Skip, saying why; in CI fail instead, so a tier that should have run is never
    reported as passed."""
    if in_ci():
        pytest.fail(f"VGATE_REQUIRE_E2E=1 but {why}", pytrace=False)
    pytest.skip(why)


TIERS = ("unit", "integration", "e2e")


def mark_tier(items: list[pytest.Item], folder: Path, tier: str) -> None:
    """Give every collected test under `folder` the marker of its tier (a tier's conftest.py
    calls this: the folder a test lives in is its tier)."""
    marker = getattr(pytest.mark, tier)
    for item in items:
        if item.path.is_relative_to(folder):
            item.add_marker(marker)
