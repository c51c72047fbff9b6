"""Clients for a tenant's own API server, from its admin kubeconfig or from a token."""

from __future__ import annotations

import base64
import copy
from typing import Any

from gateway.lifecycle.kube import KubeAPI, LightkubeAPI


def token_kubeconfig(server: str, token: str, ca: bytes | None) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "vgate",
        "clusters": [{"name": "vgate", "cluster": cluster}],
        "users": [{"name": "vgate", "user": {"token": token}}],
        "contexts": [{"name": "vgate", "context": {"cluster": "vgate", "user": "vgate"}}],
    }


def with_server(kubeconfig: dict[str, Any], server: str) -> dict[str, Any]:
    """The same kubeconfig pointed at `server` (vcluster writes https://localhost:8443)."""
    out = copy.deepcopy(kubeconfig)
    for entry in out.get("clusters") or []:
        entry.setdefault("cluster", {})["server"] = server
    return out


async def connect(
    *,
    server: str,
    kubeconfig: dict[str, Any] | None = None,
    token: str | None = None,
    ca: bytes | None = None,
) -> KubeAPI:
    """A `KubeAPI` for a tenant cluster; the credential lives only in this client."""
    if kubeconfig is not None:
        return LightkubeAPI.from_kubeconfig(with_server(kubeconfig, server))
    if token is None:
        raise ValueError("connect needs a kubeconfig or a token")
    return LightkubeAPI.from_kubeconfig(token_kubeconfig(server, token, ca))
