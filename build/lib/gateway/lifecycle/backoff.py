"""Exponential retry delays with jitter; there is no terminal failure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure in a row (1-based)."""
        raw = min(self.cap, self.base * self.factor ** max(0, failures - 1))
        return raw * (1 + random.uniform(-self.jitter, self.jitter))
