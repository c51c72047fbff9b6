"""The kube-apiserver binaries the `local` provisioner can run, one per Kubernetes minor.

Found where setup-envtest puts them:
- the assets folder itself (`$KUBEBUILDER_ASSETS` or `lifecycle.local.assets_dir`): its
  binary, at the version it reports (`kube-apiserver --version`). New tenants get this one.
- versioned folders `<x.y.z>-<os>-<arch>/kube-apiserver` in `<assets>/../k8s/` (a store next
  to a plain assets folder), or next to the assets folder when it is itself such a folder.

For each minor the newest patch wins; the assets folder's own binary wins its minor. etcd
always comes from the assets folder (all tenants share one).
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.lifecycle.versions import KubernetesVersions, minor_of

APISERVER = "kube-apiserver"
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def platform_suffix() -> str:
    """setup-envtest's `<os>-<arch>`, e.g. `linux-amd64`."""
    machine = platform.machine().lower()
    return f"{sys.platform}-{_ARCH.get(machine, machine)}"


@dataclass(frozen=True)
class ApiServerBinary:
    minor: str
    path: Path
    version: str  # what the binary reports, or the folder's version


@functools.lru_cache(maxsize=64)
def _reported(path: str, _mtime_ns: int, _size: int) -> str | None:
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=20,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bv?(\d+\.\d+\.\d+\S*)", out.stdout)
    return f"v{found.group(1)}" if out.returncode == 0 and found else None


def reported_version(binary: Path) -> str | None:
    """`kube-apiserver --version` of `binary` ("v1.28.7"); None when it does not run."""
    try:
        info = binary.stat()
    except OSError:
        return None
    return _reported(str(binary), info.st_mtime_ns, info.st_size)


def _versioned_folders(assets_dir: Path) -> list[tuple[tuple[int, ...], Path]]:
    pattern = re.compile(rf"^(\d+)\.(\d+)\.(\d+)-{re.escape(platform_suffix())}$")
    stores = {assets_dir.parent / "k8s"}
    if pattern.match(assets_dir.name):
        stores.add(assets_dir.parent)
    found = []
    for store in stores:
        try:
            entries = list(store.iterdir())
        except OSError:
            continue
        for folder in entries:
            match = pattern.match(folder.name)
            if match and (folder / APISERVER).is_file():
                found.append((tuple(int(n) for n in match.groups()), folder))
    return sorted(found)


def find_binaries(assets_dir: Path) -> dict[str, ApiServerBinary]:
    """Minor version → the binary that runs it."""
    binaries: dict[str, ApiServerBinary] = {}
    for numbers, folder in _versioned_folders(assets_dir):  # ascending: newest patch last
        version = ".".join(map(str, numbers))
        binaries[minor_of(version)] = ApiServerBinary(
            minor_of(version), folder / APISERVER, f"v{version}"
        )
    default = default_binary(assets_dir)
    if default is not None:
        binaries[default.minor] = default
    return binaries


def default_binary(assets_dir: Path) -> ApiServerBinary | None:
    """The assets folder's own kube-apiserver, at the version it reports."""
    path = assets_dir / APISERVER
    version = reported_version(path) if path.is_file() else None
    if version is None:
        return None
    return ApiServerBinary(minor_of(version), path, version)


def local_versions(assets_dir: Path) -> KubernetesVersions:
    binaries = find_binaries(assets_dir)
    default = default_binary(assets_dir)
    if default is None:
        how = (
            f"there is no runnable {APISERVER} in {assets_dir}: set $KUBEBUILDER_ASSETS "
            "or lifecycle.local.assets_dir to a folder with kube-apiserver and etcd"
        )
    else:
        how = (
            f"put a {APISERVER} for it in {assets_dir.parent / 'k8s'}/"
            f"<version>-{platform_suffix()}/ (setup-envtest's layout)"
        )
    return KubernetesVersions(
        available={m: f"{b.path}, {b.version}" for m, b in binaries.items()},
        default=default.minor if default else None,
        how_to_add=how,
    )
