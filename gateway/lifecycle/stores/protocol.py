"""`TenantStore`: where tenant records live. Secrets never go here."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Protocol

from gateway.lifecycle.model import TenantRecord, TenantSpec, TenantStatus

MANAGER_LEASE = "lifecycle-manager"  # held by the one process that reconciles


class StoreError(Exception):
    """Base of the store's errors; `str()` is a sentence for people."""


class TenantExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f'tenant "{name}" already exists')
        self.name = name


class TenantNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f'tenant "{name}" not found')
        self.name = name


class Conflict(StoreError):
    """The record changed since it was read (its `version` moved on)."""

    def __init__(self, name: str) -> None:
        super().__init__(f'tenant "{name}" was changed concurrently; read it again')
        self.name = name


class UnreadableRecord(StoreError):
    """A stored tenant this version cannot read: written by a newer vgate (a field it does
    not know: it refuses rather than ignore what may restrict access) or damaged. Listings
    leave such a tenant out, and no route is served for it from this process."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(
            f'tenant "{name}" is stored in a form this version of vgate cannot read '
            f"(written by a newer version, or damaged): {why}"
        )
        self.name = name


class TenantStore(Protocol):
    async def create(self, spec: TenantSpec) -> TenantRecord:
        """Store a new tenant; `TenantExists` if the name is taken."""

    async def get(self, name: str) -> TenantRecord:
        """The record, or `TenantNotFound`."""

    async def fingerprints(self) -> Mapping[str, Hashable]:
        """Every tenant's name → a value that changes whenever its record does (spec, status,
        or the name deleted and created again). Cheap next to `list`: with thousands of
        tenants, the route sync of every worker reads whole records only where this moved."""

    async def get_many(self, names: Iterable[str]) -> list[TenantRecord]:
        """The records of those of `names` that exist (the others are left out)."""

    async def list(self) -> list[TenantRecord]:
        """Every record, sorted by name."""

    async def update_spec(self, name: str, spec: TenantSpec, version: int) -> TenantRecord:
        """Replace the spec if the record is still at `version` (else `Conflict`)."""

    async def update_status(self, name: str, status: TenantStatus, version: int) -> TenantRecord:
        """Replace the status if the record is still at `version` (else `Conflict`)."""

    async def delete(self, name: str, version: int) -> None:
        """Forget the record if it is still at `version`."""

    async def record_activity(self, seen: dict[str, float]) -> None:
        """Batch of tenant → last request time; never moves `version`, never goes backwards."""

    async def acquire_lease(self, lease: str, holder: str, ttl: float) -> bool:
        """Take or renew the named lease for `ttl` seconds; False if someone else holds it."""

    async def release_lease(self, lease: str, holder: str) -> None: ...

    async def revision(self) -> int:
        """A number that changes whenever anyone (this instance included) committed a
        tenant change; cheap to poll. Lease writes need not move it."""

    async def close(self) -> None: ...
