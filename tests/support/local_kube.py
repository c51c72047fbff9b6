"""For tests of the lifecycle's `local` provisioner: an envtest assets layout with extra
versioned folders (setup-envtest's `k8s/<x.y.z>-<os>-<arch>/`), and the processes a work
folder's tenants left running."""

from __future__ import annotations

from pathlib import Path

from gateway.lifecycle.provisioning.local_versions import platform_suffix
from tests.support.kube import assets_dir


def versioned_assets(base: Path, versions: tuple[str, ...] = ("1.29.0",)) -> Path:
    """`base/bin` (kube-apiserver and etcd: links to the real ones) and, for each of
    `versions`, `base/k8s/<version>-<os>-<arch>/kube-apiserver` linked to the same binary:
    a folder that claims a version the binary does not have (it reports its own). Returns
    the assets folder (`base/bin`)."""
    real = assets_dir()
    bin_dir = base / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("kube-apiserver", "etcd"):
        link = bin_dir / name
        if not link.exists():
            link.symlink_to(real / name)
    for version in versions:
        folder = base / "k8s" / f"{version}-{platform_suffix()}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "kube-apiserver"
        if not link.exists():
            link.symlink_to(real / "kube-apiserver")
    return bin_dir


def processes_under(folder: Path) -> dict[int, str]:
    """pid → command line of every process whose arguments mention `folder`."""
    found = {}
    needle = str(folder).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found
