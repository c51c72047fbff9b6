"""Step-by-step progress of a tenant operation: a live line on a terminal, plain lines else."""

from __future__ import annotations

import itertools
import time
from typing import Any, TextIO

_SPINNER = "|/-\\"


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Progress:
    def __init__(self, out: TextIO, *, live: bool | None = None) -> None:
        self.out = out
        self.live = out.isatty() if live is None else live
        self._last: tuple | None = None
        self._spin = itertools.cycle(_SPINNER)
        self._started = time.monotonic()
        self._line = ""

    def show(self, tenant: dict[str, Any]) -> None:
        """Report the tenant's current phase/step/error if anything changed."""
        state = (tenant["phase"], tenant.get("step"), tenant.get("last_error"))
        name = tenant["name"]
        what = tenant.get("step") or tenant["phase"]
        error = f" (retrying: {tenant['last_error']})" if tenant.get("last_error") else ""
        if self.live:
            elapsed = human_age(time.monotonic() - self._started)
            line = f"{next(self._spin)} {name}: {what}{error} [{elapsed}]"
            self.out.write("\r\x1b[K" + line[:200])
            self.out.flush()
            self._line = line
        elif state != self._last:
            self.out.write(f"{name}: {what}{error}\n")
            self.out.flush()
        self._last = state

    def step(self, name: str, step: str) -> None:
        """A step reported by a reconciler running in this process (never missed by polling)."""
        self.show({"name": name, "phase": "", "step": step})

    def finish(self, message: str) -> None:
        if self.live and self._line:
            self.out.write("\r\x1b[K")
        self.out.write(message + "\n")
        self.out.flush()
