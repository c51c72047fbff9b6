"""`KubernetesTenantStore`: tenant records as `Tenant` objects (vgate.io/v1alpha1) in the
host cluster, and the manager lease as a `coordination.k8s.io/v1` Lease.

This is the store for several gateway replicas. Each instance keeps an informer-style cache:
one list, then a watch that applies every event, so `get`, `list` and `revision` are local
reads (the reconciler and every worker's route sync poll them twice a second). Writes go to
the API server with the object's `resourceVersion` as precondition, so a stale cache can only
cause a `Conflict`, never a lost update. The record's `version` and `generation` (what the
lifecycle's compare-and-swap speaks) live in annotations, with the creation time and the last
activity; `spec` and `status` are the same JSON as the admin API's.

The lease follows client-go's leader election: a holder renews `renewTime`; another candidate
takes over only after it has itself seen the record unchanged for `leaseDurationSeconds` (by
its own monotonic clock, so clock skew between nodes does not matter), and a released lease
(empty holder) is free at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.lifecycle.model import (
    TenantRecord,
    TenantSpec,
    TenantStatus,
    loaded_status,
    stored_spec,
    stored_status,
)
from gateway.lifecycle.stores.protocol import (
    MANAGER_LEASE,
    Conflict,
    StoreError,
    TenantExists,
    TenantNotFound,
)

log = logging.getLogger("vgate.lifecycle.store")

GROUP, VERSION, KIND, PLURAL = "vgate.io", "v1alpha1", "Tenant", "tenants"
API_VERSION = f"{GROUP}/{VERSION}"
MANAGED_BY = {"app.kubernetes.io/managed-by": "vgate"}
A_VERSION = "vgate.io/version"
A_GENERATION = "vgate.io/generation"
A_CREATED = "vgate.io/created-at"
A_ACTIVITY = "vgate.io/last-activity"
# Activity is for the idle pauser (minutes): writing it more often than this only makes
# every replica re-read the store.
ACTIVITY_GRANULARITY = 30.0
SYNC_TIMEOUT = 15.0
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def tenant_resource() -> Any:
    from lightkube.generic_resource import create_namespaced_resource

    return create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)


def in_cluster_namespace() -> str | None:
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


def _version_of(obj: dict[str, Any]) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {})[A_VERSION])
    except (KeyError, TypeError, ValueError):
        return 0


def _refusal(error: Exception | None) -> bool:
    """An answer that waiting will not change: no credential, no permission, no CRD."""
    return _status_code(error) in (401, 403, 404)


def _status_code(error: Exception | None) -> int | None:
    return getattr(getattr(error, "status", None), "code", None)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What lightkube raises when a request gets no answer: httpx's errors (lightkube 0.x)
    and httpx2's (lightkube 1.x)."""
    import httpx

    errors: list[type[Exception]] = [httpx.TransportError]
    try:
        import httpx2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        pass
    else:
        errors.append(httpx2.TransportError)
    return tuple(errors)


@contextlib.contextmanager
def _reaching(what: str) -> Iterator[None]:
    """A write that cannot reach the API server (refused, reset, timed out) is a
    `StoreError` saying what failed, like an answer with an error code: callers (the CLI,
    the admin API) know the store's errors, not the HTTP client's."""
    try:
        yield
    except _transport_errors() as exc:
        raise StoreError(f"cannot {what}: the API server did not answer: {exc!r}") from exc


def _micro_safe(moment: dt.datetime) -> dt.datetime:
    """`moment` as lightkube can send it as a Kubernetes MicroTime. lightkube 1.x encodes
    datetimes with msgspec, which leaves the fraction out when the microseconds are 0; the
    API server insists on six digits and refuses the whole object (400). Such a time moves
    by one microsecond."""
    return moment if moment.microsecond else moment.replace(microsecond=1)


def _micro_datetime(when: float) -> dt.datetime:
    return _micro_safe(dt.datetime.fromtimestamp(when, dt.UTC))


def record_of(obj: dict[str, Any]) -> TenantRecord:
    """A stored `Tenant` object as a record (ValueError when it is not one of ours)."""
    meta = obj.get("metadata") or {}
    notes = meta.get("annotations") or {}
    try:
        spec = dict(obj.get("spec") or {})
        spec["name"] = meta["name"]
        activity = notes.get(A_ACTIVITY)
        return TenantRecord(
            spec=TenantSpec.model_validate(spec),
            status=loaded_status(obj.get("status") or {}),
            version=int(notes[A_VERSION]),
            generation=int(notes[A_GENERATION]),
            created_at=float(notes[A_CREATED]),
            last_activity=float(activity) if activity else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"Tenant {meta.get('name')!r} is not a valid vgate record: {exc}") from exc


def object_of(record: TenantRecord, namespace: str, resource_version: str | None) -> dict:
    notes = {
        A_VERSION: str(record.version),
        A_GENERATION: str(record.generation),
        A_CREATED: repr(record.created_at),
    }
    if record.last_activity is not None:
        notes[A_ACTIVITY] = repr(record.last_activity)
    meta: dict[str, Any] = {
        "name": record.name,
        "namespace": namespace,
        "labels": dict(MANAGED_BY),
        "annotations": notes,
    }
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": stored_spec(record.spec, exclude={"name"}),
        "status": stored_status(record.status),
    }


@dataclass
class _Cached:
    record: TenantRecord
    resource_version: str


@dataclass
class _Observed:
    """A lease record as this process last saw it, and when (monotonic)."""

    key: tuple
    at: float


class KubernetesTenantStore:
    def __init__(
        self, *, namespace: str, lease_name: str, client: Any = None, kubeconfig: Path | None = None
    ) -> None:
        """`client` is a lightkube `AsyncClient`; by default one is made from `kubeconfig`
        (None: in-cluster service account, else $KUBECONFIG / ~/.kube/config)."""
        self.namespace = namespace
        self.lease_name = lease_name
        self._client = client
        self._kubeconfig = kubeconfig
        self._resource = tenant_resource()
        self._cache: dict[str, _Cached] = {}
        self._revision = 0
        self._synced: asyncio.Event | None = None
        self._informer: asyncio.Task | None = None
        self._sync_error: Exception | None = None
        self._observed: dict[str, _Observed] = {}

    # -- the client and the informer -------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from lightkube import AsyncClient, ConfigError, KubeConfig

            try:
                config = (
                    KubeConfig.from_file(self._kubeconfig)
                    if self._kubeconfig
                    else KubeConfig.from_env()
                )
            except (ConfigError, OSError) as exc:
                raise StoreError(
                    f"no way to reach the Kubernetes API for the tenant store "
                    f"(in-cluster, $KUBECONFIG or ~/.kube/config): {exc}"
                ) from exc
            self._client = AsyncClient(config=config, field_manager="vgate")
        return self._client

    async def _ready(self) -> None:
        """Start the informer on first use and wait for its first list."""
        if self._synced is None:
            self.client  # noqa: B018 - no configuration at all fails here, at once
            self._synced = asyncio.Event()
            self._informer = asyncio.get_running_loop().create_task(
                self._inform(), name="tenant-store-informer"
            )
        deadline = time.monotonic() + SYNC_TIMEOUT
        while not self._synced.is_set():
            refused = _refusal(self._sync_error)
            if refused or time.monotonic() > deadline:
                cause = f": {self._sync_error}" if self._sync_error else ""
                if _status_code(self._sync_error) == 404:
                    cause += " (is the tenants.vgate.io CRD installed? see the chart's crds/)"
                raise StoreError(
                    f"cannot read Tenant objects in namespace {self.namespace!r}"
                    f"{'' if refused else f' within {SYNC_TIMEOUT:.0f}s'}{cause}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._synced.wait(), 0.05)

    async def _inform(self) -> None:
        delay = 0.5
        while True:
            try:
                version = await self._relist()
                self._sync_error = None
                assert self._synced is not None
                self._synced.set()
                delay = 0.5
                async for kind, obj in self.client.watch(
                    self._resource, namespace=self.namespace, resource_version=version
                ):
                    self._apply_event(kind, obj.to_dict())
                # the server ended the watch: list again from scratch
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API down, 410 Gone, bad object: relist after a pause
                self._sync_error = exc
                log.warning("tenant store watch in %s failed, relisting: %s", self.namespace, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _relist(self) -> str:
        listing = self.client.list(self._resource, namespace=self.namespace)
        fresh: dict[str, _Cached] = {}
        async for obj in listing:
            self._keep(fresh, obj.to_dict())
        if fresh != self._cache:
            self._cache = fresh
            self._revision += 1
        return listing.resourceVersion

    def _keep(self, into: dict[str, _Cached], obj: dict[str, Any]) -> None:
        """Cache `obj`'s record; an object this version cannot read is left out, and a copy
        cached before it changed goes too (as a relist would): no route is kept on a spec
        that is no longer the stored one."""
        meta = obj.get("metadata") or {}
        try:
            into[meta["name"]] = _Cached(record_of(obj), meta["resourceVersion"])
        except (KeyError, ValueError) as exc:
            if isinstance(meta.get("name"), str):
                into.pop(meta["name"], None)
            log.warning("ignoring Tenant object: %s", exc)

    def _apply_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str):
            return
        if kind == "DELETED":
            if self._cache.pop(name, None) is not None:
                self._revision += 1
        elif kind in ("ADDED", "MODIFIED"):
            held = self._cache.get(name)
            if held is not None and held.record.version > _version_of(obj):
                return  # an event older than our own write's answer: keep the newer copy
            self._keep(self._cache, obj)
            self._revision += 1

    def _remember(self, obj: Any) -> TenantRecord:
        """Put a write's answer in the cache (the watch event may come later)."""
        data = obj.to_dict()
        cached = _Cached(record_of(data), data["metadata"]["resourceVersion"])
        self._cache[cached.record.name] = cached
        self._revision += 1
        return cached.record

    def _cached(self, name: str) -> _Cached:
        found = self._cache.get(name)
        if found is None:
            raise TenantNotFound(name)
        return found

    # -- TenantStore -----------------------------------------------------------------------

    async def create(self, spec: TenantSpec) -> TenantRecord:
        from lightkube import ApiError

        await self._ready()
        record = TenantRecord(spec=spec, version=1, generation=1, created_at=time.time())
        body = self._resource.from_dict(object_of(record, self.namespace, None))
        try:
            with _reaching(f"create Tenant {spec.name!r}"):
                created = await self.client.create(body, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                raise TenantExists(spec.name) from None
            raise StoreError(f"cannot create Tenant {spec.name!r}: {exc}") from exc
        return self._remember(created)

    async def get(self, name: str) -> TenantRecord:
        await self._ready()
        return self._cached(name).record

    async def fingerprints(self) -> dict[str, str]:
        await self._ready()
        return {name: cached.resource_version for name, cached in self._cache.items()}

    async def get_many(self, names: Iterable[str]) -> list[TenantRecord]:
        await self._ready()
        found = (self._cache.get(name) for name in names)
        return [cached.record for cached in found if cached is not None]

    async def list(self) -> list[TenantRecord]:
        await self._ready()
        return [self._cache[name].record for name in sorted(self._cache)]

    async def _replace(self, current: _Cached, record: TenantRecord) -> TenantRecord:
        from lightkube import ApiError

        body = self._resource.from_dict(object_of(record, self.namespace, current.resource_version))
        try:
            with _reaching(f"update Tenant {record.name!r}"):
                replaced = await self.client.replace(body, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 409:
                with contextlib.suppress(Exception):  # the conflict is the news to report
                    await self._refresh(record.name)  # so the caller's next read is current
                raise Conflict(record.name) from None
            if exc.status.code == 404:
                self._forget(record.name)
                raise TenantNotFound(record.name) from None
            raise StoreError(f"cannot update Tenant {record.name!r}: {exc}") from exc
        return self._remember(replaced)

    def _forget(self, name: str) -> None:
        if self._cache.pop(name, None) is not None:
            self._revision += 1

    def _at_version(self, name: str, version: int) -> _Cached:
        current = self._cached(name)
        if current.record.version != version:
            raise Conflict(name)
        return current

    async def update_spec(self, name: str, spec: TenantSpec, version: int) -> TenantRecord:
        await self._ready()
        current = self._at_version(name, version)
        record = current.record.model_copy(
            update={
                "spec": spec,
                "version": version + 1,
                "generation": current.record.generation + 1,
            }
        )
        return await self._replace(current, record)

    async def update_status(self, name: str, status: TenantStatus, version: int) -> TenantRecord:
        await self._ready()
        current = self._at_version(name, version)
        record = current.record.model_copy(update={"status": status, "version": version + 1})
        return await self._replace(current, record)

    async def delete(self, name: str, version: int) -> None:
        from lightkube import ApiError

        await self._ready()
        current = self._at_version(name, version)
        try:
            with _reaching(f"delete Tenant {name!r}"):
                await self._delete_if_unchanged(name, current.resource_version)
        except ApiError as exc:
            if exc.status.code == 409:
                raise Conflict(name) from None
            if exc.status.code != 404:
                raise StoreError(f"cannot delete Tenant {name!r}: {exc}") from exc
            self._forget(name)
            raise TenantNotFound(name) from None
        self._forget(name)

    async def _delete_if_unchanged(self, name: str, resource_version: str) -> None:
        """DELETE with `preconditions.resourceVersion` (409 if the object moved on).

        lightkube's `delete()` sends no body, so this builds the same request through its
        generic client (lightkube 0.15-1.x) and adds the `DeleteOptions` body.
        """
        generic = self.client._client
        request = generic.prepare_request(
            "delete", self._resource, name=name, namespace=self.namespace
        )
        request.data = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": resource_version},
        }
        response = await generic.send(generic.build_adapter_request(request))
        generic.handle_response("delete", response, request)

    async def record_activity(self, seen: dict[str, float]) -> None:
        """Write each tenant's newer activity time, at most one write per
        `ACTIVITY_GRANULARITY` seconds of progress; `version` does not move."""
        if not seen:
            return
        await self._ready()
        for name, when in seen.items():
            for _ in range(3):
                current = self._cache.get(name)
                if current is None:
                    break
                stored = current.record.last_activity or 0.0
                if when < stored + ACTIVITY_GRANULARITY:
                    break
                try:
                    await self._replace(
                        current, current.record.model_copy(update={"last_activity": when})
                    )
                    break
                except Conflict:
                    continue  # _replace read the current object: try again on it
                except TenantNotFound:
                    break

    async def _refresh(self, name: str) -> None:
        """Read one object past the cache (after a conflict, so the retry sees the news)."""
        from lightkube import ApiError

        try:
            obj = await self.client.get(self._resource, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                self._forget(name)
                return
            raise
        self._remember(obj)

    async def revision(self) -> int:
        await self._ready()
        return self._revision

    # -- the lease -------------------------------------------------------------------------

    def lease_object_name(self, lease: str) -> str:
        return self.lease_name if lease == MANAGER_LEASE else f"{self.lease_name}-{lease}"

    async def acquire_lease(self, lease: str, holder: str, ttl: float) -> bool:
        from lightkube import ApiError
        from lightkube.models.coordination_v1 import LeaseSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.coordination_v1 import Lease

        name = self.lease_object_name(lease)
        seconds = max(1, math.ceil(ttl))
        now = time.time()
        try:
            live = await self.client.get(Lease, name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise StoreError(f"cannot read Lease {name!r}: {exc}") from exc
            fresh = Lease(
                metadata=ObjectMeta(name=name, namespace=self.namespace, labels=dict(MANAGED_BY)),
                spec=LeaseSpec(
                    holderIdentity=holder,
                    leaseDurationSeconds=seconds,
                    acquireTime=_micro_datetime(now),
                    renewTime=_micro_datetime(now),
                    leaseTransitions=0,
                ),
            )
            try:
                await self.client.create(fresh, namespace=self.namespace)
            except ApiError as created_exc:
                if created_exc.status.code == 409:
                    return False
                raise StoreError(f"cannot create Lease {name!r}: {created_exc}") from created_exc
            return True
        spec = live.spec or LeaseSpec()
        current = spec.holderIdentity or ""
        if current != holder and current and not self._expired(name, spec):
            return False
        if current != holder:
            spec.acquireTime = _micro_datetime(now)
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        elif spec.acquireTime is not None:
            spec.acquireTime = _micro_safe(spec.acquireTime)
        spec.holderIdentity = holder
        spec.leaseDurationSeconds = seconds
        spec.renewTime = _micro_datetime(now)
        live.spec = spec
        try:
            await self.client.replace(live, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code in (404, 409):
                return False  # someone else wrote it first; look again next round
            raise StoreError(f"cannot update Lease {name!r}: {exc}") from exc
        return True

    def _expired(self, name: str, spec: Any) -> bool:
        """True once this process has seen the same record for a whole lease duration."""
        key = (spec.holderIdentity, str(spec.renewTime), spec.leaseDurationSeconds)
        seen = self._observed.get(name)
        now = time.monotonic()
        if seen is None or seen.key != key:
            self._observed[name] = _Observed(key, now)
            return False
        return now - seen.at >= (spec.leaseDurationSeconds or 1)

    async def release_lease(self, lease: str, holder: str) -> None:
        from lightkube import ApiError
        from lightkube.resources.coordination_v1 import Lease

        name = self.lease_object_name(lease)
        try:
            live = await self.client.get(Lease, name, namespace=self.namespace)
            if live.spec is None or live.spec.holderIdentity != holder:
                return
            live.spec.holderIdentity = None
            live.spec.leaseDurationSeconds = 1
            live.spec.renewTime = _micro_datetime(time.time())
            if live.spec.acquireTime is not None:
                live.spec.acquireTime = _micro_safe(live.spec.acquireTime)
            await self.client.replace(live, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code not in (404, 409):
                raise StoreError(f"cannot release Lease {name!r}: {exc}") from exc

    async def close(self) -> None:
        if self._informer is not None:
            self._informer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._informer
            self._informer = None
        if self._client is not None:
            await self._client.close()
            self._client = None
