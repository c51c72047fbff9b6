"""Object defaulting and validation: what the registry strategies would do."""

from __future__ import annotations

import base64
import re
import secrets
import uuid
from typing import Any

from .managed import now
from .model import ApiError, bad_request, invalid
from .resources import ResourceType

Obj = dict[str, Any]
NODE = "fake-node"
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_META_KEYS = {
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
}


def check_body(obj: Any, rtype: ResourceType, namespace: str, name: str | None) -> Obj:
    """Kind/apiVersion/name/namespace checks every write does."""
    if not isinstance(obj, dict):
        raise bad_request("the body of the request was in an unknown format")
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if api_version and api_version != rtype.api_version:
        raise bad_request(
            f"the API version in the data ({api_version}) does not match the "
            f"expected API version ({rtype.api_version})"
        )
    if kind and kind != rtype.kind:
        raise bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({rtype.kind})"
        )
    obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if name is not None and meta.get("name", name) != name:
        raise bad_request(
            f"the name of the object ({meta.get('name')}) does not match the name on the URL "
            f"({name})"
        )
    if rtype.namespaced:
        if meta.get("namespace", namespace) != namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    return obj


def unknown_fields(obj: Obj, rtype: ResourceType) -> list[str]:
    """Top-level and metadata fields the schema does not declare (for fieldValidation)."""
    known = {"apiVersion", "kind", "metadata", *rtype.fields}
    bad = [f'unknown field "{k}"' for k in obj if k not in known]
    bad += [f'unknown field "metadata.{k}"' for k in obj.get("metadata", {}) if k not in _META_KEYS]
    return bad


def validate_name(obj: Obj, rtype: ResourceType) -> None:
    name = obj["metadata"].get("name", "")
    if not name:
        raise invalid(
            rtype.kind, rtype.group, "", "metadata.name", "", "name or generateName is required"
        )
    pattern = _LABEL if rtype.plural in ("namespaces", "services") else _DNS1123
    if len(name) > 253 or not pattern.match(name):
        raise invalid(
            rtype.kind,
            rtype.group,
            name,
            "metadata.name",
            name,
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
            "characters, '-' or '.', and must start and end with an alphanumeric "
            "character",
        )


def generate_name(obj: Obj) -> None:
    meta = obj["metadata"]
    if not meta.get("name") and meta.get("generateName"):
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        meta["name"] = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))


def prepare_create(obj: Obj, rtype: ResourceType) -> Obj:
    """Fill in uid, timestamps, generation and the type's defaults."""
    meta = obj["metadata"]
    for k in ("resourceVersion", "deletionTimestamp", "selfLink"):
        meta.pop(k, None)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now()
    if "spec" in rtype.fields:
        meta["generation"] = 1
    _DEFAULTS.get(rtype.plural, lambda o: None)(obj)
    return obj


def prepare_update(old: Obj, new: Obj, rtype: ResourceType) -> Obj:
    """Keep server-owned metadata; bump generation when spec changes; keep status."""
    meta, old_meta = new["metadata"], old["metadata"]
    for k in ("uid", "creationTimestamp", "deletionTimestamp"):
        if k in old_meta:
            meta[k] = old_meta[k]
    if rtype.has_status:
        if "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
    if "generation" in old_meta:
        meta["generation"] = old_meta["generation"] + (new.get("spec") != old.get("spec"))
    if rtype.plural == "secrets":
        _secret(new)
    if (
        rtype.plural == "configmaps"
        and old.get("immutable")
        and (new.get("data") != old.get("data") or new.get("binaryData") != old.get("binaryData"))
    ):
        raise invalid(
            "ConfigMap", "", meta["name"], "data", "", "field is immutable when `immutable` is set"
        )
    return new


def _pod(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    containers = spec.get("containers") or []
    if not containers:
        raise invalid("Pod", "", obj["metadata"]["name"], "spec.containers", [], "Required value")
    spec.setdefault("nodeName", NODE)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("serviceAccountName", "default")
    started = now()
    ip = f"10.244.0.{secrets.randbelow(250) + 2}"
    obj["status"] = {
        "phase": "Running",
        "conditions": [
            {"type": t, "status": "True", "lastTransitionTime": started}
            for t in (
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled",
            )
        ],
        "hostIP": "10.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "qosClass": "BestEffort",
        "containerStatuses": [
            {
                "name": c.get("name", ""),
                "ready": True,
                "restartCount": 0,
                "started": True,
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": "containerd://" + uuid.uuid4().hex,
                "state": {"running": {"startedAt": started}},
            }
            for c in containers
        ],
    }


def _namespace(obj: Obj) -> None:
    name = obj["metadata"]["name"]
    obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
    obj["spec"] = {"finalizers": ["kubernetes"]}
    obj["status"] = {"phase": "Active"}


def _secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")
    string_data = obj.pop("stringData", None) or {}
    data = obj.setdefault("data", {})
    for k, v in string_data.items():
        data[k] = base64.b64encode(str(v).encode()).decode()
    for k, v in data.items():
        try:
            base64.b64decode(v, validate=True)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"illegal base64 data in data[{k!r}]") from e
    if not data:
        obj.pop("data")


def _deployment(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    n = spec["replicas"]
    obj["status"] = {
        "observedGeneration": 1,
        "replicas": n,
        "updatedReplicas": n,
        "readyReplicas": n,
        "availableReplicas": n,
    }


def _service(obj: Obj) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("clusterIP", f"10.96.0.{secrets.randbelow(250) + 2}")
    obj["status"] = {"loadBalancer": {}}


_DEFAULTS = {
    "pods": _pod,
    "namespaces": _namespace,
    "secrets": _secret,
    "deployments": _deployment,
    "services": _service,
}


def seed_pod(
    name: str,
    namespace: str = "default",
    containers: tuple[str, ...] = ("app",),
    labels: dict[str, str] | None = None,
) -> Obj:
    """A minimal Pod manifest with the given containers (image busybox)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": {"containers": [{"name": c, "image": "busybox:1.36"} for c in containers]},
    }
