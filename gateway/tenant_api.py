"""The gateway's own calls to tenants' API servers (SubjectAccessReview, TokenReview,
ServiceAccount issuer discovery), made with the gateway's credential for that tenant."""

from __future__ import annotations

import asyncio
import json

import httpx

from gateway.registry import Upstream


class TenantApi:
    """One httpx client per tenant route, replaced when the route changes."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self._clients: dict[str, tuple[Upstream, httpx.AsyncClient]] = {}
        self._timeout = timeout

    def forget(self, tenant: str) -> None:
        """The tenant's route changed: its client must not be reused."""
        entry = self._clients.pop(tenant, None)
        if entry is not None:
            asyncio.get_running_loop().create_task(entry[1].aclose())

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, upstream: Upstream) -> httpx.AsyncClient:
        entry = self._clients.get(upstream.name)
        if entry is None or entry[0] is not upstream:
            if entry is not None:
                self.forget(upstream.name)
            scheme = "https" if upstream.ssl else "http"
            client = httpx.AsyncClient(
                base_url=f"{scheme}://{upstream.authority.decode()}",
                verify=upstream.ssl if upstream.ssl else True,
                timeout=self._timeout, follow_redirects=False,
            )
            entry = (upstream, client)
            self._clients[upstream.name] = entry
        return entry[1]

    async def call(self, upstream: Upstream, method: str, path: str,
                   body: dict | None = None) -> httpx.Response:
        """`method path` at the tenant as the gateway (JSON in and out); raises
        `httpx.HTTPError` when there is no answer."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if upstream.authorization is not None:
            headers["Authorization"] = upstream.authorization().decode()
        extensions = {}
        if upstream.server_hostname and upstream.server_hostname != upstream.host:
            extensions["sni_hostname"] = upstream.server_hostname
        return await self._client(upstream).request(
            method, path, content=json.dumps(body) if body is not None else None,
            headers=headers, extensions=extensions)
