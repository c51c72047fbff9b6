"""Keep a worker's `TenantRegistry` equal to the routes in the store.

Every gateway worker runs one `RouteSync`. It polls the store's `revision()` (SQLite's
`PRAGMA data_version`, or the kubernetes store's watch counter: cheap) every
`poll_seconds`; when it moved, it reads every tenant's fingerprint (name and version) and
then whole records only for the tenants whose fingerprint changed, so a deleted tenant is
gone from every worker within a poll, and a write to one tenant (or a lease renewal, or
activity) costs every worker one record, not all of them: with 10,000 tenants, reading and
validating all records takes about half a second of CPU. It also flushes the registry's
per-tenant activity to the store in batches, and gives paused tenants that allow it a
`wake` that asks for a resume and waits for the running route. The state of every tenant
that is not Ready (phase, step, last error) goes to the registry too: a tenant without a
route yet is answered with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping
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
        self._fingerprints: dict[str, Hashable] = {}  # as applied to the registry
        self._waking: dict[str, asyncio.Task] = {}

    async def sync_once(self, *, force: bool = False) -> bool:
        """Apply store changes to the registry; True if the store was read. `force`: look
        at every fingerprint even if the revision did not move, and mirror shared
        credentials again (how a rotated token reaches this worker)."""
        revision = await self.store.revision()
        if revision == self._revision and not force:
            return False
        fingerprints = await self.store.fingerprints()
        self._revision = revision  # read before the fingerprints: a later write moves it
        changed = [n for n, f in fingerprints.items() if self._fingerprints.get(n) != f]
        gone = [n for n in self._fingerprints if n not in fingerprints]
        if self.shared is not None and (force or changed or gone):
            await self.shared.mirror()  # credentials before the routes that use them (and gone)
        records = {r.name: r for r in await self.store.get_many(changed)} if changed else {}
        for name in gone:
            self._forget(name)
        for name in changed:
            record = records.get(name)
            if record is None:  # deleted between the two reads
                self._forget(name)
            elif self._apply(record):
                self._fingerprints[name] = fingerprints[name]
        return True

    def _apply(self, record: TenantRecord) -> bool:
        """One tenant's record into the registry; False when its route cannot be built yet
        (its credential files are missing): it is tried again at the next look."""
        name = record.name
        if name in self.static:
            return True
        status = record.status
        self.registry.set_state(
            name,
            None
            if status.phase is Phase.ready
            else TenantState(
                phase=status.phase.value,
                step=status.step,
                last_error=status.last_error,
                failures=status.failures,
                reference=status.error_reference,
            ),
        )
        self._set_roles(
            name,
            None
            if record.spec.desired is Desired.deleted
            else {
                "cluster-admin": list(record.spec.admin_groups),
                "view": list(record.spec.view_groups),
            },
        )
        route = status.route
        if route is None:
            self._drop_route(name)
            return True
        if self._routes.get(name) == route:
            return True
        upstream = self._upstream(name, route)
        if upstream is None:
            return False
        self.registry.put(upstream)
        self._routes[name] = route
        return True

    def _forget(self, name: str) -> None:
        """A tenant no longer in the store."""
        self._fingerprints.pop(name, None)
        self.registry.set_state(name, None)
        self._set_roles(name, None)
        self._drop_route(name)

    def _drop_route(self, name: str) -> None:
        if self._routes.pop(name, None) is not None:
            self.registry.remove(name)

    def _set_roles(self, name: str, roles: dict[str, list[str]] | None) -> None:
        """Tenants' stored groups as roles: admin groups → cluster-admin, view → view."""
        if self.on_roles is None or self._roles.get(name) == roles:
            return
        self.on_roles(name, roles)
        if roles is None:
            self._roles.pop(name, None)
        else:
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
        """A tenant being deleted is never woken; its held requests wait (within the
        caller's timeout) until its route goes, so they are answered "being deleted" (or 404)
        rather than "starting"."""
        for _ in range(20):
            try:
                record: TenantRecord = await self.store.get(name)
            except TenantNotFound:
                return False
            if record.spec.desired in (Desired.running, Desired.deleted):
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
