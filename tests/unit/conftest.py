"""The unit tier: in-process only (crafted tokens, scripted upstreams, recording fakes, the
gateway's own processes); seconds, runs anywhere. Every test under this folder is marked
`unit`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "unit")
