"""The tenant operations shared by the CLI (direct store) and the admin API.

Each operation changes the desired spec only (compare-and-swap, re-read on conflict); the
reconciler does the work. Errors are `StoreError`s or `Refused`, with sentences for people.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from gateway.lifecycle.model import Desired, TenantRecord, TenantSpec
from gateway.lifecycle.stores.protocol import Conflict, StoreError, TenantStore
from gateway.lifecycle.versions import KubernetesVersions, minor_number


class Refused(StoreError):
    """The operation does not apply to the tenant in its current state."""


class TenantOperations:
    def __init__(
        self,
        store: TenantStore,
        *,
        static_tenants: Iterable[str] = (),
        versions: Callable[[], KubernetesVersions] | None = None,
    ) -> None:
        """`versions()`: what the provisioner can run now. A tenant created without a
        version gets its default; a version it cannot run is a `ValidationError` on
        `k8s_version`."""
        self.store = store
        self.static_tenants = frozenset(static_tenants)
        self.versions = versions

    def _validated(self, data: dict[str, Any], versions: KubernetesVersions | None) -> TenantSpec:
        return TenantSpec.model_validate(data, context={"versions": versions})

    async def create(self, spec: TenantSpec) -> TenantRecord:
        if spec.name in self.static_tenants:
            raise Refused(
                f'tenant "{spec.name}" is configured statically in the gateway '
                "config; choose another name"
            )
        if self.versions is not None:
            versions = self.versions()
            data = spec.model_dump(exclude_unset=True)
            if "k8s_version" not in data:  # the provisioner's default, checked like any
                data["k8s_version"] = versions.default or spec.k8s_version
            spec = self._validated(data, versions)
        return await self.store.create(spec)

    async def get(self, name: str) -> TenantRecord:
        return await self.store.get(name)

    async def list(self) -> list[TenantRecord]:
        return await self.store.list()

    async def _change(self, name: str, change: Callable[[TenantSpec], TenantSpec]) -> TenantRecord:
        for _ in range(20):
            record = await self.store.get(name)
            new = change(record.spec)
            if new == record.spec:
                return record
            try:
                return await self.store.update_spec(name, new, record.version)
            except Conflict:
                continue
        raise Conflict(name)

    @staticmethod
    def _alive(spec: TenantSpec) -> None:
        if spec.desired is Desired.deleted:
            raise Refused(f'tenant "{spec.name}" is being deleted')

    async def pause(self, name: str) -> TenantRecord:
        def change(spec: TenantSpec) -> TenantSpec:
            self._alive(spec)
            return spec.model_copy(update={"desired": Desired.paused})

        return await self._change(name, change)

    async def resume(self, name: str) -> TenantRecord:
        def change(spec: TenantSpec) -> TenantSpec:
            self._alive(spec)
            return spec.model_copy(update={"desired": Desired.running})

        return await self._change(name, change)

    async def upgrade(self, name: str, k8s_version: str) -> TenantRecord:
        versions = self.versions() if self.versions is not None else None

        def change(spec: TenantSpec) -> TenantSpec:
            self._alive(spec)
            data = spec.model_dump()
            data["k8s_version"] = k8s_version
            new = self._validated(data, versions)  # a version the provisioner can run
            if minor_number(new.k8s_version) < minor_number(spec.k8s_version):
                raise Refused(
                    f"downgrades are not supported ({spec.k8s_version} → {new.k8s_version})"
                )
            if minor_number(new.k8s_version) - minor_number(spec.k8s_version) > 1:
                raise Refused(
                    f"upgrade one minor version at a time ({spec.k8s_version} → {new.k8s_version})"
                )
            return new

        return await self._change(name, change)

    async def set_token_passthrough(
        self, name: str, enabled: bool, issuer: str | None = None
    ) -> TenantRecord:
        """Switch tenant-native tokens on (with their issuer, or None: asked from the
        tenant) or off; a bad issuer is a `ValidationError` on `service_account_issuer`."""

        def change(spec: TenantSpec) -> TenantSpec:
            self._alive(spec)
            data = spec.model_dump()
            data.update(token_passthrough=enabled, service_account_issuer=issuer)
            return TenantSpec.model_validate(data)

        return await self._change(name, change)

    async def delete(self, name: str) -> TenantRecord:
        return await self._change(
            name, lambda spec: spec.model_copy(update={"desired": Desired.deleted})
        )


def describe(
    record: TenantRecord, *, path_prefix: str | None = None, public_url: str | None = None
) -> dict[str, Any]:
    """A record as JSON for `show` and the admin API: spec, status and how to reach it."""
    servers = []
    if record.status.hostname:
        # the tenant's own hostname, on the scheme and port users reach the gateway with
        public = urlsplit(public_url) if public_url else None
        scheme = public.scheme if public else "https"
        port = f":{public.port}" if public and public.port else ""
        servers.append(f"{scheme}://{record.status.hostname}{port}")
    if path_prefix and public_url:
        servers.append(f"{public_url.rstrip('/')}{path_prefix}/{record.name}")
    return {
        "name": record.name,
        "phase": record.status.phase.value,
        "step": record.status.step,
        "desired": record.spec.desired.value,
        "hostname": record.status.hostname,
        "k8s_version": record.spec.k8s_version,
        "observed_k8s_version": record.status.k8s_version,
        "created_at": record.created_at,
        "age_seconds": max(0.0, time.time() - record.created_at),
        "last_activity": record.last_activity,
        "last_error": record.status.last_error,
        "error_reference": record.status.error_reference,
        "failures": record.status.failures,
        "conditions": [c.model_dump() for c in record.status.conditions],
        "servers": servers,
        "spec": record.spec.model_dump(mode="json"),
        "version": record.version,
        "generation": record.generation,
        "observed_generation": record.status.observed_generation,
    }
