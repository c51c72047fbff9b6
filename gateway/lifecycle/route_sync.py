"""Keep a worker's `TenantRegistry` equal to the routes in the store.

Every gateway worker runs one `RouteSync`. It polls the store's `revision()` (SQLite's
`PRAGMA data_version`, or the kubernetes store's watch counter: cheap) every
`poll_seconds` and re-reads the records only when something changed, so a deleted tenant
is gone from every worker within a poll. It also flushes the registry's per-tenant activity
to the store in batches, and gives paused tenants that allow it a `wake` that asks for a
resume and waits for the running route. The state of every tenant that is not Ready (phase,
step, last error) goes to the registry too: a tenant without a route yet is answered with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from gateway.config.model import Tenant as TenantConfig
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.model import Desired, Phase, RouteInfo, TenantRecord
from gateway.lifecycle.stores.protocol import Conflict, TenantNotFound, TenantStore
from gateway.registry import TenantRegistry, TenantState, Upstream, upstream_from_config

log = logging.getLogger("vgate.lifecycle.routes")


class RouteSync:
    def __init__(
        self,
        store: TenantStore,
        registry: TenantRegistry,
        *,
        static: Iterable[str] = (),
        poll_seconds: float = 0.5,
        resync_seconds: float = 30.0,
        activity_seconds: float = 10.0,
        on_roles: Callable[[str, Mapping[str, list[str]] | None], None] | None = None,
        shared: CredentialSecrets | None = None,
    ) -> None:
        """`shared`: the tenants' credentials come from Secrets (the kubernetes store). They
        are mirrored into this worker's own credential folder before routes are built and at
        every resync (how a rotated token reaches it), and routes use that folder's files,
        whatever paths the manager's replica recorded."""
        self.store = store
        self.registry = registry
        self.static = frozenset(static)
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.activity_seconds = activity_seconds
        self.on_roles = on_roles
        self.shared = shared
        self._roles: dict[str, dict[str, list[str]]] = {}
        self._revision: int | None = None
        self._routes: dict[str, RouteInfo] = {}
        self._waking: dict[str, asyncio.Task] = {}

    async def sync_once(self, *, force: bool = False) -> bool:
        """Apply store changes to the registry; True if the store was re-read."""
        revision = await self.store.revision()
        if revision == self._revision and not force:
            return False
        records = await self.store.list()
        if self.shared is not None:
            await self.shared.mirror()
        self._revision = revision
        wanted = {
            r.name: r.status.route
            for r in records
            if r.status.route is not None and r.name not in self.static
        }
        self._sync_roles(records)
        self.registry.set_states(
            {
                r.name: TenantState(
                    phase=r.status.phase.value,
                    step=r.status.step,
                    last_error=r.status.last_error,
                    failures=r.status.failures,
                )
                for r in records
                if r.status.phase is not Phase.ready and r.name not in self.static
            }
        )
        for name in set(self._routes) - set(wanted):
            self.registry.remove(name)
            del self._routes[name]
        for name, route in wanted.items():
            if self._routes.get(name) == route:
                continue
            upstream = self._upstream(name, route)
            if upstream is None:
                continue
            self.registry.put(upstream)
            self._routes[name] = route
        return True

    def _sync_roles(self, records: list[TenantRecord]) -> None:
        """Tenants' stored groups as roles: admin groups → cluster-admin, view → view."""
        if self.on_roles is None:
            return
        wanted = {
            r.name: {"cluster-admin": list(r.spec.admin_groups), "view": list(r.spec.view_groups)}
            for r in records
            if r.spec.desired is not Desired.deleted and r.name not in self.static
        }
        for name in set(self._roles) - set(wanted):
            self.on_roles(name, None)
            del self._roles[name]
        for name, roles in wanted.items():
            if self._roles.get(name) != roles:
                self.on_roles(name, roles)
                self._roles[name] = roles

    def _upstream(self, name: str, route: RouteInfo) -> Upstream | None:
        token_file, ca_file = route.token_file, route.ca_file
        if self.shared is not None:
            files = self.shared.files
            token_file = str(files.token_path(name))
            ca_file = str(files.ca_path(name)) if route.ca_file else None
        try:
            upstream = upstream_from_config(
                TenantConfig(
                    name=name,
                    upstream=route.server,
                    ca_file=Path(ca_file) if ca_file else None,
                    token_file=Path(token_file),
                    server_name=route.server_name,
                    token_passthrough=route.token_passthrough,
                    service_account_issuer=route.service_account_issuer,
                )
            )
        except (OSError, ValueError) as exc:  # credential files not there (yet)
            log.warning("tenant %s: route not usable yet: %s", name, exc)
            return None
        upstream.paused = route.paused
        if route.paused and route.auto_wake:
            upstream.wake = lambda: self.wake(name)
        return upstream

    async def flush_activity(self) -> None:
        seen = self.registry.drain_activity()
        if seen:
            await self.store.record_activity(seen)

    async def wake(self, name: str) -> bool:
        """Ask for `name` to run again and wait until its running route is in the registry.

        Concurrent requests for the same tenant share one wake-up.
        """
        task = self._waking.get(name)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._wake(name))
            self._waking[name] = task
        return await asyncio.shield(task)

    async def _wake(self, name: str) -> bool:
        for _ in range(20):
            try:
                record: TenantRecord = await self.store.get(name)
            except TenantNotFound:
                return False
            if record.spec.desired is Desired.deleted:
                return False
            if record.spec.desired is Desired.running:
                break
            log.info("tenant %s: waking on request", name)
            running = record.spec.model_copy(update={"desired": Desired.running})
            try:
                await self.store.update_spec(name, running, record.version)
                break
            except Conflict:
                continue
        while True:
            await self.sync_once()
            current = self.registry.get(name)
            if current is None:
                return False
            if not current.paused:
                return True
            await asyncio.sleep(self.poll_seconds)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_seconds
        next_flush = loop.time() + self.activity_seconds
        try:
            while True:
                now = loop.time()
                try:
                    await self.sync_once(force=now >= next_resync)
                    if now >= next_resync:
                        next_resync = now + self.resync_seconds
                    if now >= next_flush:
                        next_flush = now + self.activity_seconds
                        await self.flush_activity()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("route sync failed; retrying")
                await asyncio.sleep(self.poll_seconds)
        finally:
            with contextlib.suppress(Exception):
                await self.flush_activity()
