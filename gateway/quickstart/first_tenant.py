"""The first tenant of a quickstart: the cluster of the user's current kubeconfig context.

The gateway needs a static credential of its own for a tenant (a bearer token or a client
certificate) that may impersonate; exec plugins and auth providers are refused with advice.
"""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from gateway.kubeconfig_files import named_entries
from gateway.private_file import write_private


class QuickstartError(Exception):
    """Something the person running the quickstart must fix; the message says what."""


def _merged(paths: list[Path]) -> dict:
    """kubectl's merge: the first file to define a name (or current-context) wins."""
    merged: dict = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    for path in paths:
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise QuickstartError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise QuickstartError(f"{path}: not a kubeconfig")
        base = path.parent
        for kind in ("clusters", "users", "contexts"):
            for name, body in named_entries(doc, kind):
                merged[kind].setdefault(name, (body, base))
        merged["current-context"] = merged["current-context"] or doc.get("current-context")
    return merged


def _material(entry: dict, base: Path, key: str, out: Path) -> Path | None:
    """`key-data` (base64) written to `out`, or `key` (a file path, relative to its kubeconfig)."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            return write_private(out, base64.b64decode(data, validate=True))
        except ValueError:
            raise QuickstartError(f"{key}-data is not valid base64") from None
    if entry.get(key):
        path = Path(entry[key]).expanduser()
        return path if path.is_absolute() else base / path
    return None


def tenant_from_kubeconfig(
    paths: list[Path], context: str | None, out: Path, *, name: str
) -> tuple[dict, str]:
    """A `tenants:` entry for the context's cluster (credential files written under `out`,
    mode 0600), and a description of where it came from."""
    merged = _merged(paths)
    shown = ", ".join(str(p) for p in paths)
    context = context or merged["current-context"]
    if not context:
        raise QuickstartError(f"no current context in {shown}")
    if context not in merged["contexts"]:
        raise QuickstartError(f'context "{context}" not found in {shown}')
    ctx, _ = merged["contexts"][context]
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    if cluster_name not in merged["clusters"]:
        raise QuickstartError(f'context "{context}" names cluster "{cluster_name}", not found')
    cluster, cluster_base = merged["clusters"][cluster_name]
    user, user_base = merged["users"].get(user_name, ({}, Path(".")))
    server = str(cluster.get("server") or "")
    parts = urlsplit(server)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise QuickstartError(f'cluster "{cluster_name}" has no usable server URL ({server!r})')
    if parts.path.strip("/"):
        raise QuickstartError(
            f"the API server URL {server} has a path; vgate forwards to an API server's root "
            "(a cluster behind another proxy such as Rancher is not supported here)"
        )
    if cluster.get("proxy-url"):
        raise QuickstartError(
            f'cluster "{cluster_name}" is reached through a proxy-url, which vgate does not support'
        )
    out.mkdir(parents=True, exist_ok=True)
    tenant: dict = {"name": name, "upstream": f"{parts.scheme}://{parts.netloc}"}
    ca = _material(cluster, cluster_base, "certificate-authority", out / "upstream-ca.crt")
    if ca:
        tenant["ca_file"] = str(ca)
    if cluster.get("insecure-skip-tls-verify"):
        tenant["insecure_skip_tls_verify"] = True
    if cluster.get("tls-server-name"):
        tenant["server_name"] = cluster["tls-server-name"]
    if user.get("exec") or user.get("auth-provider"):
        raise QuickstartError(
            f'user "{user_name}" gets its credential from an exec plugin or auth provider, '
            "which the gateway cannot use on its own. Give it a token instead, e.g.:\n"
            "  kubectl create serviceaccount vgate -n kube-system\n"
            "  kubectl create clusterrolebinding vgate-impersonator "
            "--clusterrole=cluster-admin --serviceaccount=kube-system:vgate\n"
            "  kubectl create token vgate -n kube-system --duration=24h > token\n"
            "and run the quickstart with --upstream-token-file token"
        )
    token = user.get("token")
    if token:
        tenant["token_file"] = str(write_private(out / "upstream.token", token.encode() + b"\n"))
    elif user.get("tokenFile"):
        token_file = Path(user["tokenFile"]).expanduser()
        tenant["token_file"] = str(
            token_file if token_file.is_absolute() else user_base / token_file
        )
    else:
        cert = _material(user, user_base, "client-certificate", out / "upstream-client.crt")
        key = _material(user, user_base, "client-key", out / "upstream-client.key")
        if not (cert and key):
            raise QuickstartError(
                f'user "{user_name}" has neither a token nor a client certificate; the gateway '
                "needs one of them to reach the API server (see --upstream-token-file)"
            )
        tenant["client_cert_file"], tenant["client_key_file"] = str(cert), str(key)
    return tenant, f'context "{context}" ({server})'
