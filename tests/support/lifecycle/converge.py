"""Drive one tenant through the reconciler in-process, as the manager would."""

from __future__ import annotations

import asyncio

from gateway.lifecycle.model import TenantRecord
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.stores.protocol import TenantNotFound


async def run_until_converged(
    reconciler: Reconciler, name: str, *, within: float, backoff_cap: float = 5.0
) -> TenantRecord | None:
    """Drive one tenant in this process until it converges (as a manager would)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        if await reconciler.reconcile(name):
            try:
                return await reconciler.store.get(name)
            except TenantNotFound:
                return None
        record = await reconciler.store.get(name)
        delay = min(backoff_cap, reconciler.backoff.delay(max(1, record.status.failures)))
        if loop.time() + delay > deadline:
            raise TimeoutError(record.status.last_error or "not converged")
        await asyncio.sleep(delay)
