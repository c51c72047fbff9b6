"""The kubectl side of the exec plugin protocol: KUBERNETES_EXEC_INFO in, ExecCredential out."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

SUPPORTED = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


def requested_api_version(env: dict[str, str] | None = None) -> str:
    """The apiVersion kubectl asked for in KUBERNETES_EXEC_INFO (v1 when absent)."""
    raw = (env if env is not None else os.environ).get("KUBERNETES_EXEC_INFO")
    if not raw:
        return SUPPORTED[0]
    try:
        info = json.loads(raw)
    except ValueError:
        raise ValueError("KUBERNETES_EXEC_INFO is not JSON") from None
    version = info.get("apiVersion") if isinstance(info, dict) else None
    if version not in SUPPORTED:
        raise ValueError(
            f"unsupported exec credential apiVersion {version!r} "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    return version


def exec_credential(token: str, expires_at: float, api_version: str) -> str:
    """The ExecCredential JSON (one line) that kubectl reads from stdout."""
    stamp = datetime.fromtimestamp(int(expires_at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {
            "apiVersion": api_version,
            "kind": "ExecCredential",
            "status": {"token": token, "expirationTimestamp": stamp},
        },
        separators=(",", ":"),
    )
