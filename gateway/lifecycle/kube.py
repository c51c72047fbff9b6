"""`KubeAPI`: the few Kubernetes operations the lifecycle needs, on plain manifests.

`LightkubeAPI` implements it with lightkube's async client (server-side apply, field manager
`vgate`). Tests use a recording fake with the same methods.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Protocol

Manifest = dict[str, Any]
FIELD_MANAGER = "vgate"


class Unauthorized(PermissionError):
    """The API server refused the credential itself (401): it no longer knows it."""


class KubeAPI(Protocol):
    async def apply(self, obj: Manifest) -> None:
        """Server-side apply (forced) of one object."""

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> Manifest | None:
        """The object, or None when it does not exist."""

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None = None,
    ) -> list[Manifest]:
        """Objects in `namespace` (None: a cluster-scoped kind) with all of `labels`."""

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        """Delete; an object that is already gone is fine."""

    async def merge_patch(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: Manifest
    ) -> None: ...

    async def create_token(
        self, namespace: str, service_account: str, seconds: int
    ) -> tuple[str, float]:
        """TokenRequest: (token, expiry as a Unix time)."""

    async def server_version(self) -> str:
        """The `gitVersion` the API server reports on `GET /version` (like "v1.28.7")."""

    async def close(self) -> None: ...


class LightkubeAPI:
    """`KubeAPI` over a `lightkube.AsyncClient`."""

    def __init__(self, kubeconfig: Manifest | None = None) -> None:
        """In-cluster / $KUBECONFIG when `kubeconfig` is None, else that kubeconfig dict.

        The client is made on first use, so a missing configuration becomes a step error
        (shown on the tenant) rather than a crash at start-up.
        """
        self._kubeconfig = kubeconfig
        self._client: Any = None

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Manifest | None = None) -> LightkubeAPI:
        return cls(kubeconfig)

    @classmethod
    def from_path(cls, path: Path | None) -> LightkubeAPI:
        """From a kubeconfig file; None: in-cluster / $KUBECONFIG."""
        if path is None:
            return cls(None)
        import yaml

        return cls(yaml.safe_load(path.read_text()))

    @property
    def client(self) -> Any:
        if self._client is None:
            from lightkube import AsyncClient, KubeConfig

            config = KubeConfig.from_dict(self._kubeconfig) if self._kubeconfig else None
            self._client = AsyncClient(config=config, field_manager=FIELD_MANAGER)
        return self._client

    @staticmethod
    def _resource(api_version: str, kind: str) -> Any:
        from lightkube.codecs import resource_registry

        return resource_registry.load(api_version, kind)

    async def apply(self, obj: Manifest) -> None:
        from lightkube import codecs

        await self.client.apply(codecs.from_dict(obj), force=True)

    async def get(self, api_version, kind, name, namespace=None):
        from lightkube import ApiError

        try:
            res = await self.client.get(
                self._resource(api_version, kind), name, namespace=namespace
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return res.to_dict()

    async def list(self, api_version, kind, namespace, labels=None):
        res = self._resource(api_version, kind)
        return [
            o.to_dict()
            async for o in self.client.list(res, namespace=namespace, labels=labels or {})
        ]

    async def delete(self, api_version, kind, name, namespace=None):
        from lightkube import ApiError

        try:
            await self.client.delete(self._resource(api_version, kind), name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def merge_patch(self, api_version, kind, name, namespace, patch):
        from lightkube.types import PatchType

        await self.client.patch(
            self._resource(api_version, kind),
            name,
            patch,
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    async def create_token(self, namespace, service_account, seconds):
        from lightkube.models.authentication_v1 import TokenRequestSpec
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ServiceAccount

        # lightkube 1.x reads `obj.metadata.namespace` of every namespaced POST body, so the
        # TokenRequest carries the ServiceAccount's name and namespace (the server checks
        # that they match the URL's).
        request = ServiceAccount.Token(
            metadata=ObjectMeta(name=service_account, namespace=namespace),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=seconds),
        )
        result = await self.client.create(request, service_account, namespace=namespace)
        expiry = result.status.expirationTimestamp
        if isinstance(expiry, str):
            expiry = dt.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        return result.status.token, expiry.timestamp()

    async def server_version(self) -> str:
        # lightkube has no call for /version; its configured HTTP client (base URL, TLS,
        # credential: the same object in lightkube 0.15-1.x) sends the GET
        generic = self.client._client
        response = await generic.send(generic._client.build_request("GET", "/version"))
        if response.status_code == 401:
            raise Unauthorized(f"GET /version answered 401: {response.text[:200]}")
        try:
            version = response.json().get("gitVersion") if response.status_code == 200 else None
        except ValueError:
            version = None
        if not isinstance(version, str) or not version:
            raise ValueError(
                f"GET /version answered {response.status_code} without a "
                f"gitVersion: {response.text[:200]}"
            )
        return version

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
