"""What a test does when a tool it needs is not on this machine."""

from __future__ import annotations

import os
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
