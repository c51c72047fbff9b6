"""The Helm values vgate sets on every tenant's vcluster release.

Order of precedence (later wins): the base file (`deploy/vcluster/values.yaml`, configurable),
the values vgate derives from the spec (version, HA, SANs), the tenant's own `--values`.
"""

from __future__ import annotations

import copy
from typing import Any

from gateway.lifecycle.model import DEFAULT_VERSION, TenantSpec
from gateway.lifecycle.versions import KubernetesVersions

# Kubernetes minor versions the vcluster `k8s` distro can run, and the image tag used for each.
KNOWN_VERSIONS: dict[str, str] = {
    "1.30": "v1.30.13",
    "1.31": "v1.31.9",
    "1.32": "v1.32.5",
    "1.33": "v1.33.1",
}
VCLUSTER_VERSIONS = KubernetesVersions(
    available={minor: f"image tag {tag}" for minor, tag in KNOWN_VERSIONS.items()},
    default=DEFAULT_VERSION,
)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def derived_values(spec: TenantSpec, namespace: str) -> dict[str, Any]:
    """ValueError for a version no vcluster image is known for."""
    problem = VCLUSTER_VERSIONS.problem(spec.k8s_version)
    if problem:
        raise ValueError(problem)
    service = f"{spec.name}.{namespace}.svc"
    values: dict[str, Any] = {
        "controlPlane": {
            "distro": {
                "k8s": {"enabled": True, "image": {"tag": KNOWN_VERSIONS[spec.k8s_version]}}
            },
            "statefulSet": {"highAvailability": {"replicas": spec.ha}},
            "proxy": {"extraSANs": [service, f"{service}.cluster.local"]},
        },
        "exportKubeConfig": {"server": f"https://{service}:443"},
    }
    if spec.ha > 1:  # embedded SQLite cannot be shared: deploy etcd with the same quorum
        values["controlPlane"]["backingStore"] = {
            "etcd": {
                "deploy": {
                    "enabled": True,
                    "statefulSet": {"highAvailability": {"replicas": spec.ha}},
                }
            }
        }
    return values


def release_values(spec: TenantSpec, namespace: str, base: dict[str, Any]) -> dict[str, Any]:
    return deep_merge(deep_merge(base, derived_values(spec, namespace)), spec.values)
