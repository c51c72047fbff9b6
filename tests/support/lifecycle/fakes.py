"""Recording fakes of the host cluster API, the helm runner and the tenant clusters.

`World` ties them together like the real thing: installing a release creates the vcluster's
StatefulSet, Service, `vc-<name>` Secret and data PVC; a namespace delete cascades. Every
mutating call is recorded and counted, and `kill_at=N` raises `Killed` (a BaseException,
like a SIGKILL that no `except Exception` swallows) at the N-th one.
"""

from __future__ import annotations

import base64
import copy
import itertools
import time
from typing import Any

import yaml

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


class Killed(BaseException):
    """The process died here."""


def _merge(base: dict, patch: dict) -> dict:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class World:
    def __init__(self) -> None:
        self.objects: dict[Key, dict] = {}
        self.releases: dict[tuple[str, str], dict] = {}
        self.clusters: dict[str, FakeCluster] = {}
        self.calls: list[str] = []
        self.mutations = 0
        self.kill_at: int | None = None
        self.fail: dict[str, Exception] = {}  # call label → exception to raise once
        self.ca_pem: bytes | None = None  # the vclusters' CA (default: a placeholder)

    def mutate(self, label: str) -> None:
        if label in self.fail:
            raise self.fail.pop(label)
        self.mutations += 1
        self.calls.append(label)
        if self.kill_at is not None and self.mutations >= self.kill_at:
            self.kill_at = None
            raise Killed(label)

    def in_namespace(self, ns: str) -> list[Key]:
        return [k for k in self.objects if k[2] == ns]

    def snapshot(self) -> dict[Key, Any]:
        """Comparable host state (object specs without volatile fields)."""
        out = {}
        for key, obj in self.objects.items():
            obj = copy.deepcopy(obj)
            if key[1] == "Secret" and obj["metadata"]["name"] == "vgate-gateway-token":
                obj["data"] = "<token>"
            out[key] = obj
        return out


class FakeHost:
    """`KubeAPI` of the host cluster."""

    def __init__(self, world: World) -> None:
        self.world = world

    async def apply(self, obj: dict) -> None:
        meta = obj["metadata"]
        key = (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])
        self.world.mutate(f"apply {obj['kind']}/{meta['name']}")
        if (
            obj["kind"] != "Namespace"
            and key[2]
            and (("v1", "Namespace", "", key[2]) not in self.world.objects)
        ):
            raise RuntimeError(f'namespaces "{key[2]}" not found')
        live = self.world.objects.get(key, {})
        merged = _merge(copy.deepcopy(live), obj)
        for field in ("rules", "subjects", "spec", "data"):  # SSA owns these lists whole
            if field in obj:
                merged[field] = copy.deepcopy(obj[field])
        self.world.objects[key] = merged

    async def get(self, api_version, kind, name, namespace=None):
        obj = self.world.objects.get((api_version, kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(self, api_version, kind, namespace, labels=None):
        found = []
        for (av, k, ns, _), obj in self.world.objects.items():
            have = obj["metadata"].get("labels") or {}
            if (av, k, ns) == (api_version, kind, namespace) and all(
                have.get(a) == b for a, b in (labels or {}).items()
            ):
                found.append(copy.deepcopy(obj))
        return found

    async def delete(self, api_version, kind, name, namespace=None):
        key = (api_version, kind, namespace or "", name)
        self.world.mutate(f"delete {kind}/{name}")
        self.world.objects.pop(key, None)
        if kind == "Namespace":
            for k in self.world.in_namespace(name):
                del self.world.objects[k]

    async def merge_patch(self, api_version, kind, name, namespace, patch):
        key = (api_version, kind, namespace or "", name)
        self.world.mutate(f"patch {kind}/{name}")
        obj = self.world.objects[key]
        _merge(obj, patch)
        if kind == "StatefulSet":  # the controller catches up at once
            obj.setdefault("status", {})["readyReplicas"] = obj["spec"]["replicas"]
            cluster = self.world.clusters.get(obj["metadata"]["labels"].get("release", ""))
            if cluster is not None and name == cluster.release:
                cluster.running = obj["spec"]["replicas"] > 0

    async def create_token(self, namespace, service_account, seconds):
        raise NotImplementedError

    async def server_version(self):
        raise NotImplementedError

    async def close(self) -> None:
        pass


class FakeHelm:
    """`HelmRelease` whose installs create what the vcluster chart would."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.installs = 0

    async def status(self, release, namespace):
        found = self.world.releases.get((namespace, release))
        return copy.deepcopy(found) if found else None

    async def upgrade_install(self, release, namespace, chart, version, values, repo):
        w = self.world
        w.mutate(f"helm upgrade {release}")
        if ("v1", "Namespace", "", namespace) not in w.objects:
            raise RuntimeError(f"namespace {namespace} not found")
        self.installs += 1
        replicas = values["controlPlane"]["statefulSet"]["highAvailability"]["replicas"]
        server = values["exportKubeConfig"]["server"]
        cluster = w.clusters.setdefault(server, FakeCluster(server, release))
        cluster.running = True
        cluster.version = values["controlPlane"]["distro"]["k8s"]["image"]["tag"]
        labels = {"app": "vcluster", "release": server}
        sts_key = ("apps/v1", "StatefulSet", namespace, release)
        old = w.objects.get(sts_key)
        if old is not None and old["spec"]["replicas"] == 0:
            replicas = 0  # helm upgrade of a paused vcluster keeps it paused? keep as is
        w.objects[sts_key] = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {
                "name": release,
                "namespace": namespace,
                "labels": labels,
                "annotations": (old or {}).get("metadata", {}).get("annotations", {}),
            },
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": replicas},
        }
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "vc", "cluster": {"server": server}}],
            "users": [{"name": "admin", "user": {"client-certificate-data": "eA=="}}],
            "contexts": [{"name": "vc", "context": {"cluster": "vc", "user": "admin"}}],
            "current-context": "vc",
        }
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        w.objects[("v1", "Secret", namespace, f"vc-{release}")] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"vc-{release}", "namespace": namespace, "labels": labels},
            "data": {
                "config": b64(yaml.safe_dump(kubeconfig).encode()),
                "certificate-authority": b64(w.ca_pem or b"CA-" + server.encode()),
            },
        }
        w.objects[("v1", "PersistentVolumeClaim", namespace, f"data-{release}-0")] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"data-{release}-0", "namespace": namespace, "labels": labels},
        }
        w.releases[(namespace, release)] = {
            "status": "deployed",
            "chart_version": version,
            "values": copy.deepcopy(values),
        }

    async def uninstall(self, release, namespace):
        w = self.world
        w.mutate(f"helm uninstall {release}")
        w.releases.pop((namespace, release), None)
        for key in [
            k
            for k in w.objects
            if k[2] == namespace
            and k[1] != "PersistentVolumeClaim"
            and (w.objects[k]["metadata"].get("labels") or {}).get("app") == "vcluster"
        ]:
            del w.objects[key]


class FakeCluster:
    """The inside of one tenant's cluster: objects, tokens, and who used which credential."""

    _serial = itertools.count(1)

    def __init__(self, server: str, release: str) -> None:
        self.server = server
        self.release = release
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.tokens: dict[str, float] = {}
        self.running = True
        self.version = ""
        self.admin_logins = 0
        self.token_logins = 0


class FakeClusterAPI:
    def __init__(self, world: World, cluster: FakeCluster, *, admin: bool) -> None:
        self.world = world
        self.cluster = cluster
        self.admin = admin

    def _up(self) -> None:
        if not self.cluster.running:
            raise ConnectionRefusedError(f"{self.cluster.server}: connection refused")

    async def apply(self, obj):
        self._up()
        assert self.admin, "only the admin credential may change RBAC"
        meta = obj["metadata"]
        self.world.mutate(f"vcluster apply {obj['kind']}/{meta['name']}")
        self.cluster.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = (
            copy.deepcopy(obj)
        )

    async def get(self, api_version, kind, name, namespace=None):
        self._up()
        obj = self.cluster.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj else None

    async def list(self, api_version, kind, namespace, labels=None):
        return []

    async def delete(self, api_version, kind, name, namespace=None):
        self.cluster.objects.pop((kind, namespace or "", name), None)

    async def merge_patch(self, *args):
        raise NotImplementedError

    async def create_token(self, namespace, service_account, seconds):
        self._up()
        if ("ServiceAccount", namespace, service_account) not in self.cluster.objects:
            raise RuntimeError(f'serviceaccounts "{service_account}" not found')
        self.world.mutate("vcluster TokenRequest")
        token = f"token-{next(FakeCluster._serial)}"
        expiry = time.time() + seconds
        self.cluster.tokens[token] = expiry
        return token, expiry

    async def server_version(self):
        self._up()
        return self.cluster.version

    async def close(self):
        pass


def connector(world: World):
    """The provisioner's `connect`: admin kubeconfig or a token, like the real client."""

    async def connect(*, server, kubeconfig=None, token=None, ca=None):
        cluster = world.clusters.get(server)
        if cluster is None:
            raise ConnectionRefusedError(f"{server}: no such host")
        if kubeconfig is not None:
            cluster.admin_logins += 1
            return FakeClusterAPI(world, cluster, admin=True)
        if cluster.tokens.get(token, 0) < time.time():
            raise PermissionError("401 Unauthorized")
        cluster.token_logins += 1
        return FakeClusterAPI(world, cluster, admin=False)

    return connect
