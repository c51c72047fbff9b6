"""The kubelet stand-in's own tests live beside it: those that drive the real kubectl carry
`integration` themselves, the rest are `unit`."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.unit)
