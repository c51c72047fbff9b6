"""The `local` provisioner: each tenant is a real kube-apiserver from `$KUBEBUILDER_ASSETS`.

All tenants share one local etcd, each under its own `--etcd-prefix=/vgate/<name>`. The
tenant's certificates (its `system:masters` bootstrap cert included) live under
`<work_dir>/tenants/<name>/pki`, 0700; the gateway's token and CA go to the credential files.
Each API server writes an audit log (level Metadata: who did what, as whom, never bodies) to
`<work_dir>/tenants/<name>/audit.log`. Pause stops the process; resume starts it again with
the same port and data. The binary is the one for the tenant's `k8s_version`
(`local_versions`); an upgrade restarts the API server on the new binary, data kept.

There is no controller manager: the `role-aggregation` step fills the aggregated ClusterRoles
(`admin`, `edit`, `view`, which the role groups are bound to) as its aggregation controller
would, and keeps them filled on every pass.

Steps up: etcd → certificates → apiserver → role-aggregation → tenant-rbac → gateway-token.
Pause: stopped. Down: stopped → etcd-data-deleted → files-removed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.lifecycle.credentials.bootstrap import Bootstrap, TokenPolicy
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.kube import KubeAPI
from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.provisioning import local_process as proc
from gateway.lifecycle.provisioning.connect import connect
from gateway.lifecycle.provisioning.local_pki import pki_complete, write_pki
from gateway.lifecycle.provisioning.local_versions import APISERVER, find_binaries, local_versions
from gateway.lifecycle.provisioning.role_aggregation import aggregate, unaggregated
from gateway.lifecycle.steps import Step, StepFailed
from gateway.lifecycle.versions import KubernetesVersions

# Who did what, as whom (impersonated user, uid, groups, extras), never request bodies; not
# the health and version probes (vgate's own readiness checks would fill the log).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: [/healthz, /healthz/*, /livez, /livez/*, /readyz, /readyz/*, /version]
  - level: Metadata
"""


@dataclass
class LocalSettings:
    assets_dir: Path
    work_dir: Path
    token: TokenPolicy = field(default_factory=TokenPolicy)
    ready_timeout: float = 60.0


class LocalProvisioner:
    kind = "local"

    def __init__(self, files: CredentialFiles, settings: LocalSettings) -> None:
        self.files = files
        self.settings = settings

    # -- places -----------------------------------------------------------------------------

    @property
    def etcd_dir(self) -> Path:
        return self.settings.work_dir / "etcd"

    def tenant_dir(self, name: str) -> Path:
        return self.settings.work_dir / "tenants" / name

    def pki(self, name: str) -> Path:
        return self.tenant_dir(name) / "pki"

    def _port(self, name: str) -> int:
        """The tenant's API server port, chosen once and kept (routes point at it)."""
        path = self.tenant_dir(name) / "port"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            port = proc.free_port()
            path.write_text(str(port))
            return port

    def _etcd_ports(self) -> dict[str, int]:
        path = self.etcd_dir / "ports.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            self.etcd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            ports = {"client": proc.free_port(), "peer": proc.free_port()}
            path.write_text(json.dumps(ports))
            return ports

    def server(self, name: str) -> str:
        return f"https://127.0.0.1:{self._port(name)}"

    def route(self, spec: TenantSpec) -> RouteInfo:
        return RouteInfo(
            server=self.server(spec.name),
            ca_file=str(self.files.ca_path(spec.name)),
            token_file=str(self.files.token_path(spec.name)),
        )

    def versions(self) -> KubernetesVersions:
        return local_versions(self.settings.assets_dir)

    async def served_version(self, spec: TenantSpec) -> str:
        return await self._bootstrap(spec.name).served_version()

    def audit_log(self, name: str) -> Path:
        return self.tenant_dir(name) / "audit.log"

    # -- plans ------------------------------------------------------------------------------

    def up(self, spec: TenantSpec) -> list[Step]:
        name = spec.name
        return [
            Step("etcd", self._etcd_up, self._start_etcd),
            Step("certificates", lambda: self._pki_done(name), lambda: self._pki_run(name)),
            Step(
                "apiserver", lambda: self._apiserver_done(spec), lambda: self._start_apiserver(spec)
            ),
            Step(
                "role-aggregation",
                lambda: self._roles_aggregated(name),
                lambda: self._aggregate_roles(name),
            ),
            *self._bootstrap(name).steps(),
        ]

    def pause(self, spec: TenantSpec) -> list[Step]:
        return [Step("stopped", lambda: self._stopped(spec.name), lambda: self._stop(spec.name))]

    def down(self, spec: TenantSpec) -> list[Step]:
        name = spec.name
        return [
            *self.pause(spec),
            Step(
                "etcd-data-deleted", lambda: self._etcd_empty(name), lambda: self._etcd_delete(name)
            ),
            Step("files-removed", lambda: self._files_gone(name), lambda: self._remove_files(name)),
        ]

    # -- etcd -------------------------------------------------------------------------------

    def _etcd_url(self) -> str:
        return f"http://127.0.0.1:{self._etcd_ports()['client']}"

    async def _etcd_up(self) -> bool:
        if proc.running_pid(self.etcd_dir / "pid", "etcd") is None:
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                r = await client.get(self._etcd_url() + "/health")
            return r.status_code == 200 and r.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    async def _start_etcd(self) -> None:
        if proc.running_pid(self.etcd_dir / "pid", "etcd") is None:
            ports = self._etcd_ports()
            url = self._etcd_url()
            peer = f"http://127.0.0.1:{ports['peer']}"
            proc.start(
                self.settings.assets_dir / "etcd",
                [
                    "--name",
                    "vgate",
                    "--data-dir",
                    str(self.etcd_dir / "data"),
                    "--listen-client-urls",
                    url,
                    "--advertise-client-urls",
                    url,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    f"vgate={peer}",
                    "--unsafe-no-fsync",
                ],
                self.etcd_dir / "pid",
                self.etcd_dir / "etcd.log",
            )
        await self._until(self._etcd_up, "etcd")

    def _prefix(self, name: str) -> str:
        return f"/vgate/{name}"

    async def _etcd_call(self, op: str, name: str, **extra) -> dict:
        start = self._prefix(name) + "/"
        end = start[:-1] + chr(ord("/") + 1)  # every key under "<prefix>/", nothing else
        body = {
            "key": base64.b64encode(start.encode()).decode(),
            "range_end": base64.b64encode(end.encode()).decode(),
            **extra,
        }
        async with httpx.AsyncClient(timeout=10.0) as client:
            r = await client.post(f"{self._etcd_url()}/v3/kv/{op}", json=body)
        r.raise_for_status()
        return r.json()

    async def _etcd_empty(self, name: str) -> bool:
        if not (self.etcd_dir / "ports.json").exists():
            return True
        if not await self._etcd_up():
            await self._start_etcd()
        return int((await self._etcd_call("range", name, count_only=True)).get("count", 0)) == 0

    async def _etcd_delete(self, name: str) -> None:
        await self._etcd_call("deleterange", name)

    # -- the tenant's API server ------------------------------------------------------------

    async def _pki_done(self, name: str) -> bool:
        return pki_complete(self.pki(name))

    async def _pki_run(self, name: str) -> None:
        await asyncio.to_thread(write_pki, self.pki(name), name)

    def _client_ssl(self, name: str) -> ssl.SSLContext:
        pki = self.pki(name)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    async def _apiserver_ready(self, name: str) -> bool:
        if proc.running_pid(self.tenant_dir(name) / "pid", APISERVER) is None:
            return False
        try:
            async with httpx.AsyncClient(verify=self._client_ssl(name), timeout=2.0) as client:
                r = await client.get(self.server(name) + "/readyz")
            return r.status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    def _binary(self, spec: TenantSpec) -> Path:
        found = find_binaries(self.settings.assets_dir).get(spec.k8s_version)
        if found is None:
            raise StepFailed(self.versions().problem(spec.k8s_version) or spec.k8s_version)
        return found.path

    async def _apiserver_done(self, spec: TenantSpec) -> bool:
        running = proc.running_executable(self.tenant_dir(spec.name) / "pid", APISERVER)
        if running != str(self._binary(spec)):
            return False  # stopped, or another version's binary
        return await self._apiserver_ready(spec.name)

    async def _start_apiserver(self, spec: TenantSpec) -> None:
        name, binary = spec.name, self._binary(spec)
        folder, pki = self.tenant_dir(name), self.pki(name)
        running = proc.running_executable(folder / "pid", APISERVER)
        if running is not None and running != str(binary):  # a version change: same data
            await asyncio.to_thread(proc.stop, folder / "pid", APISERVER)
        if proc.running_pid(folder / "pid", APISERVER) is None:
            (folder / "audit-policy.yaml").write_text(AUDIT_POLICY)
            proc.start(
                binary,
                [
                    f"--etcd-servers={self._etcd_url()}",
                    f"--etcd-prefix={self._prefix(name)}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self._port(name)}",
                    f"--cert-dir={folder / 'certs'}",
                    f"--tls-cert-file={pki / 'server.crt'}",
                    f"--tls-private-key-file={pki / 'server.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    f"--service-account-issuer=https://{name}.vgate.local",
                    "--authorization-mode=RBAC",
                    "--service-cluster-ip-range=10.0.0.0/24",
                    "--disable-admission-plugins=ServiceAccount",
                    "--allow-privileged=true",
                    f"--audit-policy-file={folder / 'audit-policy.yaml'}",
                    f"--audit-log-path={self.audit_log(name)}",
                    "--audit-log-maxsize=100",
                    "--audit-log-maxbackup=3",
                ],
                folder / "pid",
                folder / "apiserver.log",
            )
        await self._until(lambda: self._apiserver_ready(name), f"kube-apiserver of {name}")

    async def _until(self, check, what: str) -> None:
        deadline = time.monotonic() + self.settings.ready_timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.25)
        raise StepFailed(f"{what} not ready after {self.settings.ready_timeout:.0f}s")

    async def _admin(self, name: str) -> KubeAPI:
        """A client with the tenant's `system:masters` bootstrap certificate."""
        pki = self.pki(name)
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "admin",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.server(name),
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "admin", "context": {"cluster": "local", "user": "admin"}}],
        }
        return await connect(server=self.server(name), kubeconfig=kubeconfig)

    async def _roles_aggregated(self, name: str) -> bool:
        api = await self._admin(name)
        try:
            return not await unaggregated(api)
        finally:
            await api.close()

    async def _aggregate_roles(self, name: str) -> None:
        api = await self._admin(name)
        try:
            await aggregate(api)
        finally:
            await api.close()

    def _bootstrap(self, name: str) -> Bootstrap:
        pki = self.pki(name)
        expiry_file = self.tenant_dir(name) / "token-expiry"

        async def admin() -> KubeAPI:
            return await self._admin(name)

        async def as_gateway(token: str) -> KubeAPI:
            return await connect(server=self.server(name), token=token, ca=await ca())

        async def ca() -> bytes:
            return (pki / "ca.crt").read_bytes()

        async def load_token() -> tuple[str, float] | None:
            token = self.files.read(self.files.token_path(name))
            try:
                expiry = float(expiry_file.read_text())
            except (OSError, ValueError):
                return None
            return (token.decode(), expiry) if token else None

        async def save_token(token: str, expiry: float) -> None:
            self.files.write(self.files.token_path(name), token.encode())
            expiry_file.write_text(str(expiry))

        return Bootstrap(
            tenant=name,
            admin=admin,
            as_gateway=as_gateway,
            files=self.files,
            load_token=load_token,
            save_token=save_token,
            ca=ca,
            policy=self.settings.token,
        )

    # -- pause / delete ---------------------------------------------------------------------

    async def _stopped(self, name: str) -> bool:
        return proc.running_pid(self.tenant_dir(name) / "pid", APISERVER) is None

    async def _stop(self, name: str) -> None:
        await asyncio.to_thread(proc.stop, self.tenant_dir(name) / "pid", APISERVER)

    async def _files_gone(self, name: str) -> bool:
        return not self.tenant_dir(name).exists() and not self.files.exists(name)

    async def _remove_files(self, name: str) -> None:
        import shutil

        await asyncio.to_thread(shutil.rmtree, self.tenant_dir(name), True)
        self.files.remove(name)
