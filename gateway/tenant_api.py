"""The gateway's own calls to tenants' API servers (SubjectAccessReview, TokenReview,
ServiceAccount issuer discovery), made with the gateway's credential for that tenant."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx

from gateway.registry import Upstream

log = logging.getLogger("vgate.tenant_api")

LOG_EVERY_SECONDS = 30.0
#: a review or discovery answer is a few hundred bytes; a tenant sending more is cut off
MAX_ANSWER_BYTES = 1 << 20


class CredentialRefused(Exception):
    """The tenant answered 401 or 403 to one of the gateway's own calls: the gateway's
    credential in that cluster lacks a right (a lasting misconfiguration that a retry will
    not cure). The message names the tenant and the right."""

    def __init__(self, tenant: str, status: int, needs: str) -> None:
        why = (
            "does not accept the gateway's credential"
            if status == 401
            else f"does not let the gateway's credential {needs}"
        )
        super().__init__(
            f'tenant "{tenant}" {why} (HTTP {status}); the platform team must '
            f"grant it in that cluster"
        )
        self.tenant, self.status, self.needs = tenant, status, needs


class TenantApi:
    """One httpx client per tenant route, replaced when the route changes."""

    def __init__(self, *, timeout: float = 5.0) -> None:
        self._clients: dict[str, tuple[Upstream, httpx.AsyncClient]] = {}
        self._timeout = timeout
        self._logged: dict[tuple[str, str], float] = {}

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
                timeout=self._timeout,
                follow_redirects=False,
            )
            entry = (upstream, client)
            self._clients[upstream.name] = entry
        return entry[1]

    async def call(
        self, upstream: Upstream, method: str, path: str, body: dict | None = None, *, needs: str
    ) -> httpx.Response:
        """`method path` at the tenant as the gateway (JSON in and out); raises
        `httpx.HTTPError` when there is no answer and `CredentialRefused` on a 401 or 403
        (`needs`: the right the call takes, e.g. "create
        authorization.k8s.io/subjectaccessreviews", for the message)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if upstream.authorization is not None:
            headers["Authorization"] = upstream.authorization().decode()
        extensions = {}
        if upstream.server_hostname and upstream.server_hostname != upstream.host:
            extensions["sni_hostname"] = upstream.server_hostname
        client = self._client(upstream)
        r = await self._bounded(
            client,
            client.build_request(
                method,
                path,
                content=json.dumps(body) if body is not None else None,
                headers=headers,
                extensions=extensions,
            ),
        )
        if r.status_code in (401, 403):
            refused = CredentialRefused(upstream.name, r.status_code, needs)
            self._log(refused)
            raise refused
        return r

    async def _bounded(self, client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
        """Send `request`; the whole answer is due within the timeout (httpx's own bounds
        each read, so a tenant dribbling bytes would hold the call forever) and may hold
        at most `MAX_ANSWER_BYTES`. Both failures are `httpx.HTTPError`s, like no answer."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await client.send(request, stream=True)
                try:
                    content = bytearray()
                    async for chunk in response.aiter_bytes():
                        content += chunk
                        if len(content) > MAX_ANSWER_BYTES:
                            raise httpx.RemoteProtocolError(
                                f"answer larger than {MAX_ANSWER_BYTES} bytes", request=request
                            )
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no whole answer within {self._timeout:g}s", request=request
            ) from None
        return httpx.Response(
            response.status_code,
            headers={"Content-Type": response.headers.get("Content-Type", "")},
            content=bytes(content),
            request=request,
        )

    def _log(self, refused: CredentialRefused) -> None:
        """One line per tenant and right, then one every `LOG_EVERY_SECONDS`."""
        key, now = (refused.tenant, refused.needs), time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_SECONDS) >= LOG_EVERY_SECONDS:
            if len(self._logged) >= 4096:
                self._logged.clear()
            self._logged[key] = now
            log.error("%s", refused)
