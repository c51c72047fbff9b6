"""The gateway's per-tenant credentials shared by every replica, as Secrets.

With the kubernetes tenant store, only the replica holding the manager lease mints a
tenant's token, but every replica forwards to that tenant. The manager publishes the token
and the tenant's CA in a Secret next to the `Tenant` objects; each worker mirrors those
Secrets into its own `CredentialFiles` folder (an emptyDir), where the upstream client reads
them like any token file (re-read when they change).
"""

from __future__ import annotations

import base64
import logging

from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.kube import KubeAPI

log = logging.getLogger("vgate.lifecycle.credentials")

KIND_LABEL = {"vgate.io/gateway-credential": "true"}
TENANT_LABEL = "vgate.io/credential-for"
PREFIX = "vgate-credential-"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class CredentialSecrets:
    def __init__(self, api: KubeAPI, namespace: str, files: CredentialFiles) -> None:
        self.api = api
        self.namespace = namespace
        self.files = files
        self._mirrored: dict[str, str] = {}  # tenant -> resourceVersion written to files

    @staticmethod
    def secret_name(tenant: str) -> str:
        return PREFIX + tenant

    # -- the manager's side ------------------------------------------------------------------

    async def matches(self, tenant: str, token: bytes, ca: bytes) -> bool:
        secret = await self.api.get("v1", "Secret", self.secret_name(tenant), self.namespace)
        data = (secret or {}).get("data") or {}
        return data.get("token") == _b64(token) and data.get("ca.crt") == _b64(ca)

    async def publish(self, tenant: str, token: bytes, ca: bytes) -> None:
        await self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {
                    "name": self.secret_name(tenant),
                    "namespace": self.namespace,
                    "labels": {
                        **KIND_LABEL,
                        TENANT_LABEL: tenant,
                        "app.kubernetes.io/managed-by": "vgate",
                    },
                },
                "data": {"token": _b64(token), "ca.crt": _b64(ca)},
            }
        )

    async def withdrawn(self, tenant: str) -> bool:
        return await self.api.get("v1", "Secret", self.secret_name(tenant), self.namespace) is None

    async def withdraw(self, tenant: str) -> None:
        await self.api.delete("v1", "Secret", self.secret_name(tenant), self.namespace)

    # -- every worker ------------------------------------------------------------------------

    async def mirror(self) -> None:
        """Write each published credential this process has not written at its current
        resourceVersion; remove the files of credentials that were withdrawn.

        Writing by resourceVersion (not by comparing contents) means a worker never puts an
        older token over one the manager in the same pod has just written and is about to
        publish."""
        secrets = await self.api.list("v1", "Secret", self.namespace, KIND_LABEL)
        present: set[str] = set()
        for secret in secrets:
            meta = secret.get("metadata") or {}
            tenant = (meta.get("labels") or {}).get(TENANT_LABEL)
            if not tenant or meta.get("name") != self.secret_name(tenant):
                continue
            present.add(tenant)
            version = meta.get("resourceVersion", "")
            if self._mirrored.get(tenant) == version:
                continue
            data = secret.get("data") or {}
            try:
                token = base64.b64decode(data["token"], validate=True)
                ca = base64.b64decode(data["ca.crt"], validate=True)
            except (KeyError, ValueError) as exc:
                log.warning(
                    "Secret %s/%s is not a usable credential: %s",
                    self.namespace,
                    meta.get("name"),
                    exc,
                )
                continue
            self.files.write(self.files.ca_path(tenant), ca)
            self.files.write(self.files.token_path(tenant), token)
            self._mirrored[tenant] = version
        for tenant in set(self._mirrored) - present:
            self.files.remove(tenant)
            del self._mirrored[tenant]
