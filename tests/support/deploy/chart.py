"""Render deploy/helm/vgate with the real `helm` binary (`helm template`) and parse the result."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.tiers import tool_missing

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "vgate"
RELEASE = "vgate"
NAMESPACE = "vgate-system"


def find_helm() -> str | None:
    """$HELM_BIN, else `helm` on PATH (`.ci/install_helm.py` puts it there)."""
    explicit = os.environ.get("HELM_BIN")
    if explicit and Path(explicit).is_file():
        return explicit
    return shutil.which("helm")


@dataclass(frozen=True)
class KubeTarget:
    """The cluster a render is for: what `helm install` learns from the API server (its
    version, and the group/versions and group/version/Kinds it serves), given to
    `helm template` as --kube-version and --api-versions."""

    version: str
    api_versions: tuple[str, ...] = ()

    def helm_args(self) -> tuple[str, ...]:
        args = ("--kube-version", self.version)
        for api in self.api_versions:
            args += ("--api-versions", api)
        return args


# What a 1.28/1.29 cluster serves with --feature-gates=ValidatingAdmissionPolicy=true and
# --runtime-config=admissionregistration.k8s.io/v1beta1=true (the lifecycle manager needs it).
ADMISSION_POLICY_BETA = (
    "admissionregistration.k8s.io/v1beta1",
    "admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicy",
    "admissionregistration.k8s.io/v1beta1/ValidatingAdmissionPolicyBinding",
)


def helm_kube_version(helm: str) -> str:
    """The newest Kubernetes this helm knows: what `helm template` renders for by default."""
    proc = subprocess.run(
        [helm, "version", "--template", "{{.KubeClientVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    major, minor = proc.stdout.strip().removeprefix("v").split(".")[:2]
    return f"{int(major)}.{int(minor)}.0"


def require_helm() -> str:
    """The helm binary; else skip saying how to get it, or fail under VGATE_REQUIRE_E2E=1 (CI
    installs helm, so a missing one there is a broken machine, not a reason to skip)."""
    path = find_helm()
    if path is None:
        why = "helm is not installed: run `python .ci/install_helm.py` (CI does) or set HELM_BIN"
        tool_missing(why)
    return path


def helm_env() -> dict[str, str]:
    """The environment helm runs in: its cache, config and data in a folder of the tests."""
    base = tempfile.gettempdir()
    return {
        **os.environ,
        "HELM_CACHE_HOME": f"{base}/vgate-helm-cache",
        "HELM_CONFIG_HOME": f"{base}/vgate-helm-config",
        "HELM_DATA_HOME": f"{base}/vgate-helm-data",
    }


@contextmanager
def values_file(values: dict[str, Any] | None) -> Iterator[Path]:
    """`values` in a temporary YAML file for helm's --values."""
    with tempfile.TemporaryDirectory(prefix="vgate-values-") as folder:
        path = Path(folder) / "values.yaml"
        path.write_text(yaml.safe_dump(values or {}))
        yield path


class RenderError(Exception):
    """`helm template` refused the values; `str()` is helm's message."""


@dataclass(frozen=True)
class Rendered:
    text: str
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def gateway_config(self) -> dict[str, Any]:
        """The vgate.yaml rendered into the config ConfigMap."""
        cm = self.one("ConfigMap", f"{RELEASE}-config")
        return yaml.safe_load(cm["data"]["vgate.yaml"])


def render(
    helm: str,
    values: dict[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    target: KubeTarget | None = None,
    extra_args: tuple[str, ...] = (),
) -> Rendered:
    """`helm template` the chart with `values` for `target` (None: helm's default, the newest
    Kubernetes it knows); raise RenderError with helm's stderr."""
    if target is not None:
        extra_args = (*target.helm_args(), *extra_args)
    with values_file(values) as path:
        proc = subprocess.run(
            [
                helm,
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                namespace,
                "--values",
                str(path),
                *extra_args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=helm_env(),
        )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return Rendered(proc.stdout, objects)
