"""Server-side printing: meta.k8s.io/v1 Table responses like kube-apiserver's."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]
Column = tuple[str, str, int]  # name, type, priority

_NAME: Column = ("Name", "string", 0)
_AGE: Column = ("Age", "string", 0)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration (coarse)."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h"
    return f"{h // 24}d"


def age(obj: Obj) -> str:
    ts = obj.get("metadata", {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    t = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return human_duration((datetime.datetime.now(datetime.UTC) - t).total_seconds())


def _pod(o: Obj) -> list[Any]:
    st = o.get("status", {})
    cs = st.get("containerStatuses") or []
    total = len(o.get("spec", {}).get("containers") or [])
    ready = sum(1 for c in cs if c.get("ready"))
    restarts = sum(int(c.get("restartCount", 0)) for c in cs)
    phase = st.get("phase", "Pending")
    if o["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    return [o["metadata"]["name"], f"{ready}/{total}", phase, str(restarts), age(o),
            st.get("podIP", "<none>"), o.get("spec", {}).get("nodeName", "<none>"), "<none>",
            "<none>"]


def _deploy(o: Obj) -> list[Any]:
    spec, st = o.get("spec", {}), o.get("status", {})
    containers = spec.get("template", {}).get("spec", {}).get("containers") or []
    sel = spec.get("selector", {}).get("matchLabels") or {}
    return [o["metadata"]["name"], f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            st.get("updatedReplicas", 0), st.get("availableReplicas", 0), age(o),
            ",".join(c.get("name", "") for c in containers),
            ",".join(c.get("image", "") for c in containers),
            ",".join(f"{k}={v}" for k, v in sel.items())]


def _svc(o: Obj) -> list[Any]:
    spec = o.get("spec", {})
    ports = ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}"
                     for p in spec.get("ports") or [])
    sel = ",".join(f"{k}={v}" for k, v in (spec.get("selector") or {}).items())
    return [o["metadata"]["name"], spec.get("type", "ClusterIP"),
            spec.get("clusterIP", "<none>"), "<none>", ports or "<none>", age(o),
            sel or "<none>"]


_PRINTERS: dict[str, tuple[list[Column], Callable[[Obj], list[Any]]]] = {
    "pods": (
        [_NAME, ("Ready", "string", 0), ("Status", "string", 0), ("Restarts", "string", 0),
         _AGE, ("IP", "string", 1), ("Node", "string", 1), ("Nominated Node", "string", 1),
         ("Readiness Gates", "string", 1)],
        _pod,
    ),
    "configmaps": (
        [_NAME, ("Data", "integer", 0), _AGE],
        lambda o: [o["metadata"]["name"],
                   len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)],
    ),
    "secrets": (
        [_NAME, ("Type", "string", 0), ("Data", "integer", 0), _AGE],
        lambda o: [o["metadata"]["name"], o.get("type", "Opaque"), len(o.get("data") or {}),
                   age(o)],
    ),
    "namespaces": (
        [_NAME, ("Status", "string", 0), _AGE],
        lambda o: [o["metadata"]["name"], o.get("status", {}).get("phase", "Active"), age(o)],
    ),
    "serviceaccounts": (
        [_NAME, ("Secrets", "string", 0), _AGE],
        lambda o: [o["metadata"]["name"], str(len(o.get("secrets") or [])), age(o)],
    ),
    "services": (
        [_NAME, ("Type", "string", 0), ("Cluster-IP", "string", 0),
         ("External-IP", "string", 0), ("Port(s)", "string", 0), _AGE,
         ("Selector", "string", 1)],
        _svc,
    ),
    "deployments": (
        [_NAME, ("Ready", "string", 0), ("Up-to-date", "integer", 0),
         ("Available", "integer", 0), _AGE, ("Containers", "string", 1),
         ("Images", "string", 1), ("Selector", "string", 1)],
        _deploy,
    ),
}

_DEFAULT: tuple[list[Column], Callable[[Obj], list[Any]]] = (
    [_NAME, ("Created At", "date", 0)],
    lambda o: [o["metadata"]["name"], o["metadata"].get("creationTimestamp")],
)


def columns(rtype: ResourceType) -> list[Obj]:
    cols, _ = _PRINTERS.get(rtype.plural, _DEFAULT)
    return [
        {"name": n, "type": t, "format": "name" if n == "Name" else "",
         "description": f"{n} of the {rtype.singular}", "priority": p}
        for n, t, p in cols
    ]


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}


def table(rtype: ResourceType, items: list[Obj], include: str, list_meta: Obj,
          with_columns: bool = True) -> Obj:
    """A Table with one row per item (`include`: None | Metadata | Object)."""
    _, cells = _PRINTERS.get(rtype.plural, _DEFAULT)
    rows = []
    for o in items:
        row: Obj = {"cells": cells(o)}
        ro = _row_object(o, include)
        if ro is not None:
            row["object"] = ro
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns(rtype) if with_columns else None,
        "rows": rows,
    }
