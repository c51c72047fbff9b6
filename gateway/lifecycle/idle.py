"""Pause tenants nobody used for `idle_timeout` seconds (only while holding the manager lease)."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.lifecycle.model import Desired, Phase
from gateway.lifecycle.stores.protocol import MANAGER_LEASE, Conflict, TenantStore

log = logging.getLogger("vgate.lifecycle.idle")


class IdlePauser:
    def __init__(
        self, store: TenantStore, holder: str, idle_seconds: float, *, check_seconds: float = 30.0
    ) -> None:
        self.store = store
        self.holder = holder
        self.idle_seconds = idle_seconds
        self.check_seconds = check_seconds

    async def pause_idle(self, now: float | None = None) -> list[str]:
        """Ask every running tenant idle for longer than the limit to pause; their names."""
        now = time.time() if now is None else now
        paused = []
        for record in await self.store.list():
            ready = record.status.condition("Ready")
            if record.spec.desired is not Desired.running or record.status.phase is not Phase.ready:
                continue
            since = max(
                record.last_activity or 0.0,
                ready.last_transition if ready else 0.0,
                record.created_at,
            )
            if now - since < self.idle_seconds:
                continue
            try:
                await self.store.update_spec(
                    record.name,
                    record.spec.model_copy(update={"desired": Desired.paused}),
                    record.version,
                )
            except Conflict:
                continue  # changed meanwhile; look again next round
            log.info("tenant %s: idle for %.0fs, pausing", record.name, now - since)
            paused.append(record.name)
        return paused

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                if await self.store.acquire_lease(MANAGER_LEASE, self.holder, 15.0):
                    await self.pause_idle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("idle check failed")
