"""The level-triggered reconciler.

For one tenant a pass builds the plan for its desired state, finds the first step whose
`done()` is false, runs it, and goes on until every step is done. A step that raises sets the
`Ready` condition to False with the error and the worker retries after a backoff; nothing is
ever marked failed for good. Because every decision is taken from the world (not from what
was recorded), a pass killed anywhere and started again converges, and drift (a deleted
namespace or binding) is repaired on the next pass.

Route registration is the reconciler's own step, so it is the same for every provisioner:
last when coming up, first when pausing (the route turns "paused") or deleting (gone). So is
recording the Kubernetes version the tenant's API server reports (`status.k8s_version`), after
the route: what `tenant list` shows is what the tenant runs, not what was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.model import (
    Condition,
    Desired,
    Phase,
    RouteInfo,
    TenantRecord,
    TenantStatus,
    new_error_reference,
)
from gateway.lifecycle.steps import Provisioner, Step
from gateway.lifecycle.stores.protocol import (
    MANAGER_LEASE,
    Conflict,
    TenantNotFound,
    TenantStore,
    UnreadableRecord,
)

log = logging.getLogger("vgate.lifecycle")

ProgressHook = Callable[[str, str], None]  # (tenant, step)


class _Superseded(Exception):
    """A waiting step was abandoned: the tenant's spec changed meanwhile."""


def _digest(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _at_step(phase: Phase, step: str) -> Callable[[TenantStatus], TenantStatus]:
    return lambda s: s.model_copy(update={"phase": phase, "step": step})


class Reconciler:
    def __init__(
        self,
        store: TenantStore,
        provisioner: Provisioner,
        *,
        hostname: Callable[[str], str | None] = lambda name: None,
        auto_wake_default: bool = False,
        backoff: Backoff | None = None,
        resync_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        on_step: ProgressHook | None = None,
    ) -> None:
        self.store = store
        self.provisioner = provisioner
        self.hostname = hostname
        self.auto_wake_default = auto_wake_default
        self.backoff = backoff or Backoff()
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        self.on_step = on_step
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._workers: dict[str, asyncio.Task] = {}

    # -- one pass --------------------------------------------------------------------------

    def plan(self, record: TenantRecord) -> list[Step]:
        spec = record.spec
        if spec.desired is Desired.deleted:
            return [
                Step(
                    "deregister-route",
                    self._route_is(record.name, lambda: None),
                    self._set_route(record.name, lambda: None),
                ),
                *self.provisioner.down(spec),
            ]

        def route() -> RouteInfo:
            """Computed when checked: the CA digest changes once a new CA was written."""
            info = self.provisioner.route(spec)
            return info.model_copy(
                update={
                    "paused": spec.desired is Desired.paused,
                    "auto_wake": self.auto_wake_default
                    if spec.auto_wake is None
                    else spec.auto_wake,
                    "ca_sha256": _digest(info.ca_file),
                    "token_passthrough": spec.token_passthrough,
                    "service_account_issuer": spec.service_account_issuer,
                }
            )

        if spec.desired is Desired.paused:
            return [
                Step(
                    "mark-route-paused",
                    self._route_is(record.name, route),
                    self._set_route(record.name, route),
                ),
                *self.provisioner.pause(spec),
            ]
        return [
            *self.provisioner.up(spec),
            Step(
                "register-route",
                self._route_is(record.name, route),
                self._set_route(record.name, route),
            ),
            Step("version-observed", self._version_is(record), self._set_version(record)),
        ]

    async def reconcile(self, name: str) -> bool:
        """One pass for one tenant. True when the tenant is converged (or gone)."""
        converged, _ = await self._pass(name)
        return converged

    async def _pass(self, name: str) -> tuple[bool, int | None]:
        """`reconcile`, and the generation of the spec the pass acted on (None: gone)."""
        try:
            record = await self.store.get(name)
        except TenantNotFound:
            return True, None
        desired = record.spec.desired
        busy = {
            Desired.running: Phase.provisioning,
            Desired.paused: Phase.pausing,
            Desired.deleted: Phase.deleting,
        }[desired]
        current = None
        try:
            for step in self.plan(record):
                current = step.name  # errors name the step, whether checking or running
                if await step.done():
                    continue
                await self._update(name, _at_step(busy, step.name))
                if self.on_step:
                    self.on_step(name, step.name)
                log.info("tenant %s: %s", name, step.name)
                if step.waits:
                    await self._unless_superseded(name, record.generation, step.run())
                else:
                    await step.run()
        except asyncio.CancelledError:
            raise
        except _Superseded:
            return False, record.generation  # the next pass acts on the new spec
        except Exception as exc:
            message = f"{current or 'plan'}: {exc}"
            # drawn once per pass (`_update` may apply `failed` again after a conflict); the
            # episode's own reference when the step keeps failing with the same error
            fresh = recorded = new_error_reference()

            def failed(s: TenantStatus) -> TenantStatus:
                nonlocal recorded
                s = s.with_condition(
                    Condition(type="Ready", status="False", reason="StepFailed", message=message)
                ).failed(message, fresh=fresh)
                recorded = s.error_reference or fresh
                if s.phase is Phase.pending:  # a step's check failed before any step ran
                    s = s.model_copy(update={"phase": busy, "step": current})
                return s

            try:
                await self._update(name, failed)
            finally:  # the reference the store now holds, as users and `tenant show` see it
                log.warning("tenant %s: %s (error reference %s)", name, message, recorded)
            return False, record.generation
        if desired is Desired.deleted:
            await self._forget(name)
            return True, record.generation
        done = Phase.paused if desired is Desired.paused else Phase.ready
        generation = record.generation

        def converged(s: TenantStatus) -> TenantStatus:
            s = s.with_condition(
                Condition(
                    type="Ready",
                    status="True" if done is Phase.ready else "False",
                    reason="Running" if done is Phase.ready else "Paused",
                )
            )
            return s.model_copy(
                update={
                    "phase": done,
                    "step": None,
                    "last_error": None,
                    "error_reference": None,
                    "failures": 0,
                    "observed_generation": generation,
                    "hostname": self.hostname(name),
                }
            )

        await self._update(name, converged)
        return True, generation

    async def _unless_superseded(
        self, name: str, generation: int, waiting: Awaitable[None]
    ) -> None:
        """Await `waiting` (a step that only waits), abandoning it with `_Superseded` once
        the tenant's spec moves past `generation` or the tenant is gone."""
        task = asyncio.ensure_future(waiting)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=self.poll_seconds)
                if task.done():
                    break
                try:
                    current = (await self.store.get(name)).generation
                except TenantNotFound:
                    current = None
                if current != generation:
                    raise _Superseded(name)
            task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- the reconciler's own steps ---------------------------------------------------------

    def _route_is(self, name: str, route: Callable[[], RouteInfo | None]):
        async def done() -> bool:
            return (await self.store.get(name)).status.route == route()

        return done

    def _set_route(self, name: str, route: Callable[[], RouteInfo | None]):
        async def run() -> None:
            wanted = route()
            await self._update(name, lambda s: s.model_copy(update={"route": wanted}))

        return run

    def _version_is(self, record: TenantRecord):
        async def done() -> bool:
            served = await self.provisioner.served_version(record.spec)
            return (await self.store.get(record.name)).status.k8s_version == served

        return done

    def _set_version(self, record: TenantRecord):
        async def run() -> None:
            served = await self.provisioner.served_version(record.spec)
            await self._update(record.name, lambda s: s.model_copy(update={"k8s_version": served}))

        return run

    async def _update(self, name: str, change: Callable[[TenantStatus], TenantStatus]) -> None:
        """Apply `change` to the latest status, re-reading on a version conflict."""
        for _ in range(20):
            record = await self.store.get(name)
            new = change(record.status)
            if new == record.status:
                return
            try:
                await self.store.update_status(name, new, record.version)
                return
            except Conflict:
                continue
        raise Conflict(name)

    async def _forget(self, name: str) -> None:
        for _ in range(20):
            try:
                record = await self.store.get(name)
            except TenantNotFound:
                return
            if record.spec.desired is not Desired.deleted:
                return  # re-created or un-deleted meanwhile
            try:
                await self.store.delete(name, record.version)
                return
            except Conflict:
                continue

    # -- the long-running manager -----------------------------------------------------------

    async def run(self, *, lease_ttl: float = 15.0) -> None:
        """Reconcile every tenant, one worker each, while holding the manager lease.

        A store that fails (host API server down, 5xx/429, credential revoked, SQLite file
        locked) never ends the manager: the error is logged and the round retried. While
        renewals fail the workers go on only until the lease last written runs out (another
        replica may take it from then on), and start again with the next renewal.
        """
        loop = asyncio.get_running_loop()
        renew_at = 0.0
        held_until = 0.0  # monotonic end of the lease this process last wrote
        leader = False
        seen: int | None = None  # store revision of the last listing
        full_at = 0.0
        try:
            while True:
                try:
                    if loop.time() >= renew_at:  # a write: renew well before expiry, not per poll
                        asked = loop.time()
                        try:
                            leader = await asyncio.wait_for(
                                self.store.acquire_lease(MANAGER_LEASE, self.holder, lease_ttl),
                                lease_ttl / 3,
                            )
                        except Exception:
                            leader = leader and loop.time() < held_until
                            renew_at = loop.time() + min(1.0, lease_ttl / 3)
                            raise
                        held_until = asked + lease_ttl if leader else 0.0
                        renew_at = loop.time() + lease_ttl / 3
                    elif leader and loop.time() >= held_until:
                        leader = False  # renewals kept failing: the lease is gone
                    if leader:
                        for name in [n for n, t in self._workers.items() if t.done()]:
                            del self._workers[name]
                        # new tenants come from other writers, which move the revision; list
                        # on that (and once per resync), not on every poll
                        revision = await self.store.revision()
                        if revision != seen or loop.time() >= full_at or not self._workers:
                            seen, full_at = revision, loop.time() + self.resync_seconds
                            for record in await self.store.list():
                                task = self._workers.get(record.name)
                                if task is None or task.done():
                                    self._workers[record.name] = asyncio.create_task(
                                        self._worker(record.name), name=f"reconcile-{record.name}"
                                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("lifecycle manager: %s; retrying", exc or type(exc).__name__)
                if not leader and self._workers:
                    await self._stop_workers()  # someone else manages now, or may
                await asyncio.sleep(self.poll_seconds)
        finally:
            await self._stop_workers()
            with contextlib.suppress(Exception):
                await self.store.release_lease(MANAGER_LEASE, self.holder)

    async def _stop_workers(self) -> None:
        for task in self._workers.values():
            task.cancel()
        for task in self._workers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers.clear()

    async def _worker(self, name: str) -> None:
        while True:
            # the revision is read before the pass reads the spec: a change committed after
            # that read moves the revision, and the wait below then sees it
            seen: int | None = None
            generation: int | None = None
            try:
                seen = await self.store.revision()
                converged, generation = await self._pass(name)
                failures = (await self.store.get(name)).status.failures
            except (TenantNotFound, UnreadableRecord):
                return  # gone, or for a version that can read it (listed again once it can)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tenant %s: reconcile pass crashed", name)
                converged, failures = False, 1
            delay = self.resync_seconds if converged else self.backoff.delay(max(1, failures))
            await self._wait_for_change(name, generation, delay, seen)

    async def _wait_for_change(
        self, name: str, generation: int | None, delay: float, seen: int | None
    ) -> None:
        """Sleep up to `delay`, waking early once the tenant's generation differs from
        `generation` (read only when the store's revision moved past `seen`, which the
        caller took before it read `generation`; None: take it now)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        if seen is None:
            seen = await self.store.revision()
        while loop.time() < deadline:
            await asyncio.sleep(min(self.poll_seconds, max(0.0, deadline - loop.time())))
            revision = await self.store.revision()
            if revision == seen:
                continue
            seen = revision
            try:
                record = await self.store.get(name)
            except TenantNotFound:
                return
            if record.generation != generation:
                return
