"""Legacy discovery documents and /version (what kubectl reads before exec, logs, cp and
port-forward). The version minor picks the kubectl of /usr/bin/kubectl's dispatcher: 1.32,
which tries WebSocket before SPDY."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from .resources import GROUP_VERSIONS, TYPES, ResourceType

Obj = dict[str, Any]

VERSION: Obj = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-fakekube",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-12-11T00:00:00Z",
    "goVersion": "go1.23.3",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def api_versions(server_address: str) -> Obj:
    """GET /api."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str) -> Obj:
    versions = [{"groupVersion": f"{g}/{v}", "version": v} for g, v in GROUP_VERSIONS if g == name]
    return {"name": name, "versions": versions, "preferredVersion": versions[0]}


def group_names() -> list[str]:
    return list(dict.fromkeys(g for g, _ in GROUP_VERSIONS if g))


def api_group_list() -> Obj:
    """GET /apis."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g) for g in group_names()],
    }


def api_group(name: str) -> Obj | None:
    """GET /apis/<group>."""
    if name not in group_names():
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name)}


def _storage_hash(t: ResourceType) -> str:
    digest = hashlib.sha256(f"{t.group}/{t.version}/{t.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _entries(t: ResourceType) -> list[Obj]:
    main: Obj = {
        "name": t.plural,
        "singularName": t.singular,
        "namespaced": t.namespaced,
        "kind": t.kind,
        "verbs": list(t.verbs),
    }
    if t.short_names:
        main["shortNames"] = list(t.short_names)
    if t.categories:
        main["categories"] = list(t.categories)
    if not t.virtual:
        main["storageVersionHash"] = _storage_hash(t)
    out = [main]
    for s in t.subresources:
        out.append(
            {
                "name": f"{t.plural}/{s.name}",
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": s.kind or t.kind,
                "verbs": list(s.verbs),
            }
        )
    return out


def resource_list(group: str, version: str) -> Obj | None:
    """GET /api/v1 or /apis/<group>/<version>."""
    if (group, version) not in GROUP_VERSIONS:
        return None
    gv = f"{group}/{version}" if group else version
    resources = [e for t in TYPES if (t.group, t.version) == (group, version) for e in _entries(t)]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }
