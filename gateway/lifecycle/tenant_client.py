"""Two ways for `vgate tenant` to reach the tenants: the store directly, or the admin API.

Both return `describe()`-shaped dicts and raise the store's errors, so the commands do not
care which one they talk to.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
from pydantic import ValidationError

from gateway.lifecycle.model import TenantSpec, field_problems
from gateway.lifecycle.operations import Refused, TenantOperations, describe
from gateway.lifecycle.stores.protocol import StoreError, TenantExists, TenantNotFound

Tenant = dict[str, Any]


class Invalid(StoreError):
    """The input was rejected; `causes` lists (field, message)."""

    def __init__(self, causes: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in causes))
        self.causes = causes


class TenantClient(Protocol):
    async def create(self, spec: dict[str, Any]) -> Tenant: ...
    async def list(self) -> list[Tenant]: ...
    async def get(self, name: str) -> Tenant: ...
    async def pause(self, name: str) -> Tenant: ...
    async def resume(self, name: str) -> Tenant: ...
    async def upgrade(self, name: str, k8s_version: str) -> Tenant: ...
    async def token_passthrough(self, name: str, enabled: bool, issuer: str | None) -> Tenant: ...
    async def delete(self, name: str) -> Tenant: ...
    async def close(self) -> None: ...


def _invalid(exc: ValidationError) -> Invalid:
    return Invalid(field_problems(exc))


class DirectClient:
    def __init__(
        self,
        operations: TenantOperations,
        *,
        path_prefix: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self.operations = operations
        self._show = lambda r: describe(r, path_prefix=path_prefix, public_url=public_url)

    async def create(self, spec):
        try:
            return self._show(await self.operations.create(TenantSpec.model_validate(spec)))
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def list(self):
        return [self._show(r) for r in await self.operations.list()]

    async def get(self, name):
        return self._show(await self.operations.get(name))

    async def pause(self, name):
        return self._show(await self.operations.pause(name))

    async def resume(self, name):
        return self._show(await self.operations.resume(name))

    async def upgrade(self, name, k8s_version):
        try:
            return self._show(await self.operations.upgrade(name, k8s_version))
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def token_passthrough(self, name, enabled, issuer):
        try:
            return self._show(await self.operations.set_token_passthrough(name, enabled, issuer))
        except ValidationError as exc:
            raise _invalid(exc) from None

    async def delete(self, name):
        return self._show(await self.operations.delete(name))

    async def close(self):
        await self.operations.store.close()


class ApiClient:
    """The admin API of a running gateway (`--server`, bearer `--token`)."""

    def __init__(self, server: str, token: str, *, verify: str | bool = True) -> None:
        self.http = httpx.AsyncClient(
            base_url=server.rstrip("/") + "/admin",
            verify=verify,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30.0,
        )

    async def _call(self, method: str, path: str, name: str | None = None, body: Any = None) -> Any:
        r = await self.http.request(method, path, json=body)
        if r.status_code < 300:
            return r.json()
        try:
            status = r.json()
            message = status.get("message", r.text)
        except ValueError:
            status, message = {}, r.text[:300]
        if r.status_code == 404 and name:
            raise TenantNotFound(name)
        if r.status_code == 409 and status.get("reason") == "AlreadyExists" and name:
            raise TenantExists(name)
        if r.status_code == 422:
            causes = status.get("details", {}).get("causes") or []
            raise Invalid(
                [(c.get("field", "input"), c.get("message", "")) for c in causes]
                or [("input", message)]
            )
        if r.status_code == 409:
            raise Refused(message)
        raise StoreError(f"admin API {r.status_code}: {message}")

    async def create(self, spec):
        return await self._call("POST", "/tenants", spec.get("name"), spec)

    async def list(self):
        return (await self._call("GET", "/tenants"))["items"]

    async def get(self, name):
        return await self._call("GET", f"/tenants/{name}", name)

    async def pause(self, name):
        return await self._call("POST", f"/tenants/{name}/pause", name)

    async def resume(self, name):
        return await self._call("POST", f"/tenants/{name}/resume", name)

    async def upgrade(self, name, k8s_version):
        return await self._call(
            "POST", f"/tenants/{name}/upgrade", name, {"k8s_version": k8s_version}
        )

    async def token_passthrough(self, name, enabled, issuer):
        return await self._call(
            "POST",
            f"/tenants/{name}/token-passthrough",
            name,
            {"token_passthrough": enabled, "service_account_issuer": issuer},
        )

    async def delete(self, name):
        return await self._call("DELETE", f"/tenants/{name}", name)

    async def close(self):
        await self.http.aclose()
