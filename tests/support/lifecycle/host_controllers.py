"""What a host cluster's kube-controller-manager and kubelet would do for a vcluster release,
played against a real kube-apiserver that has neither (the helm provisioner's e2e test).

No registry ships those two, so this stand-in does the minimum a tenant namespace needs, with
the admin credential, by polling:
- the StatefulSet controller + kubelet: a StatefulSet's pods are "ready" (status), and the
  PVCs of its `volumeClaimTemplates` exist while it has replicas;
- the vcluster pod: once it runs, the `vc-<release>` Secret with an admin kubeconfig of the
  tenant's API server (here: another real kube-apiserver);
- the pvc-protection and namespace controllers: a deleted PVC loses its finalizer, a
  terminating namespace is emptied and finalized.
"""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Callable

import httpx

from tests.support.kube import ADMIN_TOKEN, ApiServer

NAMESPACED = (
    "api/v1/{ns}/secrets",
    "api/v1/{ns}/configmaps",
    "api/v1/{ns}/services",
    "api/v1/{ns}/serviceaccounts",
    "api/v1/{ns}/resourcequotas",
    "api/v1/{ns}/limitranges",
    "api/v1/{ns}/persistentvolumeclaims",
    "apis/apps/v1/{ns}/statefulsets",
    "apis/rbac.authorization.k8s.io/v1/{ns}/roles",
    "apis/rbac.authorization.k8s.io/v1/{ns}/rolebindings",
    "apis/networking.k8s.io/v1/{ns}/networkpolicies",
)
MERGE = {"Content-Type": "application/merge-patch+json"}


class HostControllers:
    def __init__(
        self,
        host: ApiServer,
        tenant: ApiServer,
        is_tenant_namespace: Callable[[str], bool],
        *,
        poll: float = 0.2,
    ) -> None:
        self.http = httpx.Client(
            base_url=host.url,
            timeout=10,
            verify=ssl.create_default_context(cafile=str(host.ca_file)),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        self.tenant = tenant
        self.is_tenant_namespace = is_tenant_namespace
        self.poll = poll
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HostControllers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                for ns in self.http.get("/api/v1/namespaces").json()["items"]:
                    name = ns["metadata"]["name"]
                    if not self.is_tenant_namespace(name):
                        continue
                    if ns["metadata"].get("deletionTimestamp"):
                        self._finalize(ns)
                    else:
                        self._statefulsets(name)
                        self._released_pvcs(name)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                self.errors.append(repr(exc))

    def _items(self, path: str) -> list[dict]:
        r = self.http.get(path)
        return r.json().get("items") or [] if r.status_code == 200 else []

    def _statefulsets(self, ns: str) -> None:
        for sts in self._items(f"/apis/apps/v1/namespaces/{ns}/statefulsets"):
            name, want = sts["metadata"]["name"], sts["spec"].get("replicas", 1)
            if (sts.get("status") or {}).get("readyReplicas", 0) != want:
                self.http.patch(
                    f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/status",
                    headers=MERGE,
                    json={
                        "status": {
                            "replicas": want,
                            "readyReplicas": want,
                            "availableReplicas": want,
                        }
                    },
                )
            if want == 0:
                continue
            for template in sts["spec"].get("volumeClaimTemplates") or []:
                self.http.post(
                    f"/api/v1/namespaces/{ns}/persistentvolumeclaims",
                    json={
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {
                            "name": f"{template['metadata']['name']}-{name}-0",
                            "labels": sts["spec"]["selector"]["matchLabels"],
                        },
                        "spec": template["spec"],
                    },
                )  # 409 once it exists
            release = (sts["metadata"].get("labels") or {}).get("release")
            if release == name:
                self._vcluster_secret(ns, name)

    def _vcluster_secret(self, ns: str, release: str) -> None:
        """What the vcluster pod writes once it runs: an admin kubeconfig of its API server."""
        if self.http.get(f"/api/v1/namespaces/{ns}/secrets/vc-{release}").status_code == 200:
            return
        kubeconfig = self.tenant.kubeconfig_text(ADMIN_TOKEN).replace(
            f"certificate-authority: '{self.tenant.ca_file}'",
            "certificate-authority-data: "
            f"'{base64.b64encode(self.tenant.ca_file.read_bytes()).decode()}'",
        )
        data = {
            "config": kubeconfig.encode(),
            "certificate-authority": self.tenant.ca_file.read_bytes(),
        }
        self.http.post(
            f"/api/v1/namespaces/{ns}/secrets",
            json={
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"vc-{release}", "labels": {"app": "vcluster"}},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            },
        )

    def _released_pvcs(self, ns: str) -> None:
        for pvc in self._items(f"/api/v1/namespaces/{ns}/persistentvolumeclaims"):
            meta = pvc["metadata"]
            if meta.get("deletionTimestamp") and meta.get("finalizers"):
                self.http.patch(
                    f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{meta['name']}",
                    headers=MERGE,
                    json={"metadata": {"finalizers": None}},
                )

    def _finalize(self, ns: dict) -> None:
        name = ns["metadata"]["name"]
        for collection in NAMESPACED:
            path = "/" + collection.format(ns=f"namespaces/{name}")
            for item in self._items(path):
                self.http.delete(f"{path}/{item['metadata']['name']}")
        self._released_pvcs(name)
        ns["spec"]["finalizers"] = []
        self.http.put(f"/api/v1/namespaces/{name}/finalize", json=ns)
