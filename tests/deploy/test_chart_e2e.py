"""e2e: the rendered manifests pass a real kube-apiserver's validation and admission
(`kubectl apply --dry-run=server --validate=strict`), including the admission policy's CEL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import envtest
from tests.deploy.chart import NAMESPACE, render
from tests.deploy.schemas import SHAPED_CRDS
from tests.deploy.variants import VARIANTS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = envtest.missing_binaries()
    if missing:
        pytest.skip(f"no {' and '.join(missing)} in {envtest.assets_dir()} "
                    "(set KUBEBUILDER_ASSETS): the e2e tier needs a real API server")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    with envtest.api_server(tmp_path_factory.mktemp("apiserver")) as path:
        subprocess.run(["kubectl", "--kubeconfig", str(path), "create", "namespace", NAMESPACE],
                       check=True, capture_output=True, timeout=60)
        yield path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_server_side_dry_run_accepts_every_builtin_object(helm: str, kubeconfig: Path,
                                                          variant: str) -> None:
    out = render(helm, VARIANTS[variant])
    # Custom resources need their CRDs (cert-manager, Gateway API, Traefik, prometheus-
    # operator), which this API server does not have; they are shape-checked offline.
    builtin = [o for o in out.objects if (o["apiVersion"], o["kind"]) not in SHAPED_CRDS]
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "--dry-run=server",
         "--validate=strict", "-f", "-"],
        input=yaml.safe_dump_all(builtin), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(builtin)
