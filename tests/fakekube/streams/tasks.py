"""Structured clean-up for the few tasks a session starts."""

from __future__ import annotations

import asyncio


async def cancel_all(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every unfinished task and wait for all of them; their outcome is discarded."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if live:
        await asyncio.wait(live)
    for task in live:
        if not task.cancelled():
            task.exception()  # mark retrieved: no "exception was never retrieved" noise
