"""The `helm` provisioner: a vcluster per tenant on a real host cluster.

Steps up: namespace → isolation → host-rbac → vcluster-release → resumed → ready →
tenant-rbac → gateway-token. Pause: scaled-down (the vcluster CLI's annotations).
Down: release-uninstalled → pvcs-deleted → namespace-deleted → credentials-removed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.lifecycle.credentials.bootstrap import Bootstrap, TokenPolicy
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.kube import KubeAPI, Manifest
from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.provisioning import host_objects as objects
from gateway.lifecycle.provisioning.helm_runner import HelmRelease
from gateway.lifecycle.provisioning.vcluster_values import VCLUSTER_VERSIONS, release_values
from gateway.lifecycle.steps import Step, StepFailed
from gateway.lifecycle.versions import KubernetesVersions

log = logging.getLogger("vgate.lifecycle")
PAUSED = "loft.sh/paused"
PAUSED_REPLICAS = "loft.sh/paused-replicas"
MANAGED_BY_VCLUSTER = "vcluster.loft.sh/managed-by"


@dataclass
class HelmSettings:
    chart: str = "vcluster"
    repo: str | None = "https://charts.loft.sh"
    chart_version: str | None = "0.26.0"
    namespace_prefix: str = "vcluster-"
    pod_security: str = "baseline"
    gateway_namespace: str = "vgate"
    # bind this ClusterRole to the manager's ServiceAccount in each tenant namespace
    manager_cluster_role: str | None = None
    manager_service_account: str | None = None
    base_values: dict[str, Any] = field(default_factory=dict)
    server_template: str = "https://{name}.{namespace}.svc:443"
    ready_timeout: float = 300.0
    poll_seconds: float = 2.0
    # a release "pending-*" for longer than this was left by a helm that died mid-operation
    # (its manager killed): longer than any helm vgate runs (HelmRunner kills it at 600 s)
    stale_pending_seconds: float = 900.0
    token: TokenPolicy = field(default_factory=TokenPolicy)


# async connect(*, server, kubeconfig=None, token=None, ca=None) -> KubeAPI: a client for the
# tenant's API server, either with the admin kubeconfig (server overridden) or with a token.
VClusterConnect = Any


class HelmProvisioner:
    kind = "helm"

    def __init__(
        self,
        host: KubeAPI,
        helm: HelmRelease,
        connect: VClusterConnect,
        files: CredentialFiles,
        settings: HelmSettings,
        shared: CredentialSecrets | None = None,
    ) -> None:
        """`shared`: publish the gateway's credentials for other replicas (kubernetes store)."""
        self.host = host
        self.helm = helm
        self.connect = connect
        self.files = files
        self.settings = settings
        self.shared = shared

    def namespace(self, spec: TenantSpec) -> str:
        return self.settings.namespace_prefix + spec.name

    def server(self, spec: TenantSpec) -> str:
        return self.settings.server_template.format(name=spec.name, namespace=self.namespace(spec))

    def route(self, spec: TenantSpec) -> RouteInfo:
        return RouteInfo(
            server=self.server(spec),
            ca_file=str(self.files.ca_path(spec.name)),
            token_file=str(self.files.token_path(spec.name)),
        )

    def versions(self) -> KubernetesVersions:
        return VCLUSTER_VERSIONS

    async def served_version(self, spec: TenantSpec) -> str:
        return await self._bootstrap(spec).served_version()

    # -- plans ------------------------------------------------------------------------------

    def up(self, spec: TenantSpec) -> list[Step]:
        return [
            Step(
                "namespace", lambda: self._namespace_done(spec), lambda: self._namespace_run(spec)
            ),
            *(
                [
                    Step(
                        "manager-access",
                        lambda: self._manager_access_done(spec),
                        lambda: self._manager_access_run(spec),
                    )
                ]
                if self.settings.manager_cluster_role
                else []
            ),
            Step(
                "isolation", lambda: self._isolation_done(spec), lambda: self._isolation_run(spec)
            ),
            Step(
                "host-rbac", lambda: self._host_rbac_done(spec), lambda: self._host_rbac_run(spec)
            ),
            Step(
                "vcluster-release",
                lambda: self._release_done(spec),
                lambda: self._release_run(spec),
            ),
            Step("resumed", lambda: self._resumed_done(spec), lambda: self._resume(spec)),
            Step("ready", lambda: self._ready(spec), lambda: self._wait_ready(spec), waits=True),
            *self._bootstrap(spec).steps(),
        ]

    def pause(self, spec: TenantSpec) -> list[Step]:
        return [Step("scaled-down", lambda: self._paused_done(spec), lambda: self._pause(spec))]

    def down(self, spec: TenantSpec) -> list[Step]:
        return [
            Step(
                "release-uninstalled",
                lambda: self._uninstalled(spec),
                lambda: self._uninstall(spec),
            ),
            Step("pvcs-deleted", lambda: self._no_pvcs(spec), lambda: self._delete_pvcs(spec)),
            Step(
                "namespace-deleted",
                lambda: self._namespace_gone(spec),
                lambda: self._delete_namespace(spec),
            ),
            Step(
                "credentials-removed",
                lambda: self._files_gone(spec),
                lambda: self._remove_files(spec),
            ),
        ]

    # -- namespace, isolation, host RBAC ----------------------------------------------------

    async def _own_namespace(self, spec: TenantSpec, *, strict: bool = True) -> Manifest | None:
        """The tenant's namespace. One taken by something else is StepFailed when `strict`
        (creating), and counts as absent otherwise (deleting never touches it)."""
        live = await self.host.get("v1", "Namespace", self.namespace(spec))
        if live is None:
            return None
        found = (live.get("metadata", {}).get("labels") or {}).get(objects.TENANT_LABEL)
        if found != spec.name:
            if not strict:
                return None
            raise StepFailed(
                f"namespace {self.namespace(spec)} exists and is not managed by "
                f"vgate for tenant {spec.name}; refusing to touch it"
            )
        return live

    async def _namespace_done(self, spec: TenantSpec) -> bool:
        live = await self._own_namespace(spec)
        if live is None or live.get("status", {}).get("phase") == "Terminating":
            return False
        want = objects.namespace(spec, self.namespace(spec), self.settings.pod_security)
        have = live["metadata"].get("labels") or {}
        return all(have.get(k) == v for k, v in want["metadata"]["labels"].items())

    async def _namespace_run(self, spec: TenantSpec) -> None:
        live = await self._own_namespace(spec)
        if live is not None and live.get("status", {}).get("phase") == "Terminating":
            raise StepFailed(f"namespace {self.namespace(spec)} is still terminating")
        await self.host.apply(
            objects.namespace(spec, self.namespace(spec), self.settings.pod_security)
        )

    def _manager_binding(self, spec: TenantSpec) -> Manifest:
        s = self.settings
        assert s.manager_cluster_role is not None
        return objects.manager_binding(
            spec,
            self.namespace(spec),
            s.manager_cluster_role,
            s.manager_service_account or "vgate",
            s.gateway_namespace,
        )

    async def _manager_access_done(self, spec: TenantSpec) -> bool:
        want = self._manager_binding(spec)
        try:
            live = await self.host.get(
                want["apiVersion"], want["kind"], want["metadata"]["name"], self.namespace(spec)
            )
        except Exception:  # before the binding exists, reading it is forbidden (403)
            return False
        return live is not None and all(live.get(k) == want[k] for k in ("roleRef", "subjects"))

    async def _manager_access_run(self, spec: TenantSpec) -> None:
        await self.host.apply(self._manager_binding(spec))

    def _isolation_objects(self, spec: TenantSpec) -> list[tuple[Manifest, bool]]:
        ns = self.namespace(spec)
        return [
            (objects.resource_quota(spec, ns), bool(spec.quota)),
            (objects.limit_range(spec, ns), spec.isolate),
            (objects.network_policy(spec, ns, self.settings.gateway_namespace), spec.isolate),
            (objects.gateway_ingress(spec, ns, self.settings.gateway_namespace), True),
        ]

    async def _isolation_done(self, spec: TenantSpec) -> bool:
        for obj, wanted in self._isolation_objects(spec):
            live = await self.host.get(
                obj["apiVersion"],
                obj["kind"],
                obj["metadata"]["name"],
                obj["metadata"]["namespace"],
            )
            if wanted != (live is not None):
                return False
            if wanted and live is not None and live.get("spec") != obj["spec"]:
                return False
        return True

    async def _isolation_run(self, spec: TenantSpec) -> None:
        for obj, wanted in self._isolation_objects(spec):
            meta = obj["metadata"]
            if wanted:
                await self.host.apply(obj)
            else:
                await self.host.delete(
                    obj["apiVersion"], obj["kind"], meta["name"], meta["namespace"]
                )

    async def _host_rbac_done(self, spec: TenantSpec) -> bool:
        ns = self.namespace(spec)
        for want in (objects.admin_role(spec, ns), objects.admin_binding(spec, ns)):
            live = await self.host.get(
                want["apiVersion"], want["kind"], want["metadata"]["name"], ns
            )
            if live is None or any(
                live.get(k) != want[k] for k in ("rules", "subjects", "roleRef") if k in want
            ):
                return False
        return True

    async def _host_rbac_run(self, spec: TenantSpec) -> None:
        ns = self.namespace(spec)
        await self.host.apply(objects.admin_role(spec, ns))
        await self.host.apply(objects.admin_binding(spec, ns))

    # -- the vcluster release ---------------------------------------------------------------

    def _values(self, spec: TenantSpec) -> dict[str, Any]:
        return release_values(spec, self.namespace(spec), self.settings.base_values)

    async def _release_done(self, spec: TenantSpec) -> bool:
        status = await self.helm.status(spec.name, self.namespace(spec))
        if status is None or status["status"] != "deployed":
            return False
        if self.settings.chart_version and status["chart_version"] != self.settings.chart_version:
            return False
        return status["values"] == self._values(spec)

    async def _release_run(self, spec: TenantSpec) -> None:
        await self._unlock_release(spec)
        await self.helm.upgrade_install(
            spec.name,
            self.namespace(spec),
            self.settings.chart,
            self.settings.chart_version,
            self._values(spec),
            self.settings.repo,
        )

    async def _unlock_release(self, spec: TenantSpec) -> None:
        """A release helm left "pending-install/upgrade/rollback" (the helm process killed
        with its manager) refuses every later `helm upgrade` ("another operation is in
        progress"). Once it has been pending for `stale_pending_seconds` nobody is working
        on it: a pending first install is uninstalled, a pending upgrade or rollback rolled
        back to the previous revision; the upgrade that follows does the work again.
        Younger, it is a readable step failure, retried."""
        ns = self.namespace(spec)
        status = await self.helm.status(spec.name, ns)
        state = str((status or {}).get("status") or "")
        if not state.startswith("pending-"):
            return
        assert status is not None
        since = status.get("deployed_at")
        age = None if since is None else time.time() - since
        if age is None or age < self.settings.stale_pending_seconds:
            took = "for an unknown time" if age is None else f"for {age:.0f}s"
            raise StepFailed(
                f"helm release {spec.name} in {ns} is {state} {took}: another helm operation "
                f"is in progress, or one died; it is repaired once pending for "
                f"{self.settings.stale_pending_seconds:.0f}s"
            )
        log.warning("helm release %s in %s left %s for %.0fs: repairing", spec.name, ns, state, age)
        if state == "pending-install":
            await self.helm.uninstall(spec.name, ns)
        else:
            await self.helm.rollback(spec.name, ns)

    async def _statefulsets(self, spec: TenantSpec) -> list[Manifest]:
        ns = self.namespace(spec)
        found = []
        for name in (spec.name, f"{spec.name}-etcd"):
            live = await self.host.get("apps/v1", "StatefulSet", name, ns)
            if live is not None:
                found.append(live)
        return found

    async def _resumed_done(self, spec: TenantSpec) -> bool:
        return not any(
            PAUSED in (s["metadata"].get("annotations") or {})
            for s in await self._statefulsets(spec)
        )

    async def _resume(self, spec: TenantSpec) -> None:
        """Undo a pause the way `vcluster resume` does: restore replicas, drop annotations."""
        for sts in await self._statefulsets(spec):
            notes = sts["metadata"].get("annotations") or {}
            if PAUSED not in notes:
                continue
            replicas = int(notes.get(PAUSED_REPLICAS) or spec.ha)
            await self.host.merge_patch(
                "apps/v1",
                "StatefulSet",
                sts["metadata"]["name"],
                self.namespace(spec),
                {
                    "metadata": {"annotations": {PAUSED: None, PAUSED_REPLICAS: None}},
                    "spec": {"replicas": replicas},
                },
            )

    async def _ready(self, spec: TenantSpec) -> bool:
        sts = await self.host.get("apps/v1", "StatefulSet", spec.name, self.namespace(spec))
        if sts is None:
            return False
        want = sts.get("spec", {}).get("replicas", 1) or 0
        ready = sts.get("status", {}).get("readyReplicas", 0) or 0
        secret = await self.host.get("v1", "Secret", f"vc-{spec.name}", self.namespace(spec))
        return want > 0 and ready >= want and secret is not None

    async def _wait_ready(self, spec: TenantSpec) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(self.settings.poll_seconds)
            if await self._ready(spec):
                return
        raise StepFailed(f"vcluster {spec.name} not ready after {self.settings.ready_timeout:.0f}s")

    # -- inside the vcluster ----------------------------------------------------------------

    async def _admin_secret(self, spec: TenantSpec) -> dict[str, bytes]:
        secret = await self.host.get("v1", "Secret", f"vc-{spec.name}", self.namespace(spec))
        if secret is None:
            raise StepFailed(f"secret vc-{spec.name} not found in {self.namespace(spec)}")
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def _bootstrap(self, spec: TenantSpec) -> Bootstrap:
        ns = self.namespace(spec)
        server = self.server(spec)

        async def admin() -> KubeAPI:
            data = await self._admin_secret(spec)
            if "config" not in data:
                raise StepFailed(f"secret vc-{spec.name} has no kubeconfig")
            kubeconfig = yaml.safe_load(data["config"])
            return await self.connect(server=server, kubeconfig=kubeconfig)

        async def as_gateway(token: str) -> KubeAPI:
            return await self.connect(server=server, token=token, ca=await ca())

        async def ca() -> bytes:
            data = await self._admin_secret(spec)
            if "certificate-authority" not in data:
                raise StepFailed(f"secret vc-{spec.name} has no certificate-authority")
            return data["certificate-authority"]

        async def load_token() -> tuple[str, float] | None:
            secret = await self.host.get("v1", "Secret", objects.TOKEN_SECRET, ns)
            if secret is None:
                return None
            data = secret.get("data") or {}
            try:
                token = base64.b64decode(data["token"]).decode()
                expiry = float(base64.b64decode(data["expiry"]).decode())
            except (KeyError, ValueError):
                return None
            return token, expiry

        async def save_token(token: str, expiry: float) -> None:
            await self.host.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {
                        "name": objects.TOKEN_SECRET,
                        "namespace": ns,
                        "labels": objects.labels(spec.name),
                    },
                    "data": {
                        "token": base64.b64encode(token.encode()).decode(),
                        "expiry": base64.b64encode(str(expiry).encode()).decode(),
                    },
                }
            )

        return Bootstrap(
            tenant=spec.name,
            admin=admin,
            as_gateway=as_gateway,
            files=self.files,
            load_token=load_token,
            save_token=save_token,
            ca=ca,
            policy=self.settings.token,
            shared=self.shared,
        )

    # -- pause ------------------------------------------------------------------------------

    async def _paused_done(self, spec: TenantSpec) -> bool:
        for sts in await self._statefulsets(spec):
            notes = sts["metadata"].get("annotations") or {}
            if notes.get(PAUSED) != "true" or sts.get("spec", {}).get("replicas"):
                return False
        pods = await self.host.list(
            "v1", "Pod", self.namespace(spec), {MANAGED_BY_VCLUSTER: spec.name}
        )
        return not pods

    async def _pause(self, spec: TenantSpec) -> None:
        """Pause like `vcluster pause`: remember replicas, scale to 0, drop synced pods."""
        ns = self.namespace(spec)
        for sts in await self._statefulsets(spec):
            notes = sts["metadata"].get("annotations") or {}
            replicas = notes.get(PAUSED_REPLICAS) or str(
                sts.get("spec", {}).get("replicas") or spec.ha
            )
            await self.host.merge_patch(
                "apps/v1",
                "StatefulSet",
                sts["metadata"]["name"],
                ns,
                {
                    "metadata": {"annotations": {PAUSED: "true", PAUSED_REPLICAS: replicas}},
                    "spec": {"replicas": 0},
                },
            )
        for pod in await self.host.list("v1", "Pod", ns, {MANAGED_BY_VCLUSTER: spec.name}):
            await self.host.delete("v1", "Pod", pod["metadata"]["name"], ns)

    # -- delete -----------------------------------------------------------------------------

    async def _uninstalled(self, spec: TenantSpec) -> bool:
        if await self._own_namespace(spec, strict=False) is None:
            return True  # no namespace of ours, so no release of ours either
        return await self.helm.status(spec.name, self.namespace(spec)) is None

    async def _uninstall(self, spec: TenantSpec) -> None:
        await self.helm.uninstall(spec.name, self.namespace(spec))

    async def _no_pvcs(self, spec: TenantSpec) -> bool:
        if await self._own_namespace(spec, strict=False) is None:
            return True
        return not await self.host.list("v1", "PersistentVolumeClaim", self.namespace(spec))

    async def _delete_pvcs(self, spec: TenantSpec) -> None:
        ns = self.namespace(spec)
        if await self._own_namespace(spec, strict=False) is None:
            return
        for pvc in await self.host.list("v1", "PersistentVolumeClaim", ns):
            await self.host.delete("v1", "PersistentVolumeClaim", pvc["metadata"]["name"], ns)

    async def _namespace_gone(self, spec: TenantSpec) -> bool:
        return await self._own_namespace(spec, strict=False) is None

    async def _delete_namespace(self, spec: TenantSpec) -> None:
        if await self._own_namespace(spec, strict=False) is None:
            return
        await self.host.delete("v1", "Namespace", self.namespace(spec))
        deadline = time.monotonic() + self.settings.ready_timeout
        while await self._own_namespace(spec, strict=False) is not None:
            if time.monotonic() > deadline:
                raise StepFailed(f"namespace {self.namespace(spec)} still terminating")
            await asyncio.sleep(self.settings.poll_seconds)

    async def _files_gone(self, spec: TenantSpec) -> bool:
        if self.files.exists(spec.name):
            return False
        return self.shared is None or await self.shared.withdrawn(spec.name)

    async def _remove_files(self, spec: TenantSpec) -> None:
        if self.shared is not None:
            await self.shared.withdraw(spec.name)
        self.files.remove(spec.name)


def load_base_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: vcluster values must be a mapping")
    return loaded
