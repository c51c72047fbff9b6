"""The lifecycle inside a `vgate serve` worker: route sync always, the manager when enabled.

Every worker keeps its registry in step with the store. Each worker also runs a manager
(reconciler + idle pauser), but only the one holding the store's manager lease acts, so a
crashed worker's duties move to another within the lease time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from gateway.config.model import GatewayConfig
from gateway.lifecycle.assemble import (
    build_reconciler,
    lifecycle_of,
    open_store,
    shared_credentials,
)
from gateway.lifecycle.idle import IdlePauser
from gateway.lifecycle.route_sync import RouteSync
from gateway.registry import TenantRegistry

log = logging.getLogger("vgate.lifecycle")

RolesHook = Callable[[str, Mapping[str, list[str]] | None], None]


class LifecycleRuntime:
    def __init__(
        self, config: GatewayConfig, registry: TenantRegistry, on_roles: RolesHook | None = None
    ) -> None:
        self.config = config
        self.registry = registry
        self.on_roles = on_roles
        self._stores: list = []
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        lc = lifecycle_of(self.config)
        sync_store = open_store(self.config)
        self._stores.append(sync_store)
        shared = shared_credentials(self.config)
        if shared is not None:
            self._closers.append(shared.api.close)
        sync = RouteSync(
            sync_store,
            self.registry,
            static=[t.name for t in self.config.tenants],
            poll_seconds=lc.poll_seconds,
            on_roles=self.on_roles,
            shared=shared,
        )
        await sync.sync_once(force=True)  # routes are there before the first request
        self._tasks.append(asyncio.create_task(sync.run(), name="lifecycle-routes"))
        if lc.manage:
            manager_store = open_store(self.config)
            self._stores.append(manager_store)
            reconciler = build_reconciler(self.config, manager_store)
            self._tasks.append(asyncio.create_task(reconciler.run(), name="lifecycle-manager"))
            if lc.idle_timeout_seconds:
                pauser = IdlePauser(manager_store, reconciler.holder, lc.idle_timeout_seconds)
                self._tasks.append(asyncio.create_task(pauser.run(), name="lifecycle-idle"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for store in self._stores:
            await store.close()
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
