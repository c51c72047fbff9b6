"""Render deploy/helm/vgate with the real `helm` binary (`helm template`) and parse the result."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "vgate"
RELEASE = "vgate"
NAMESPACE = "vgate-system"


def find_helm() -> str | None:
    """$HELM_BIN, else `helm` on PATH (`.ci/install_helm.py` puts it there)."""
    explicit = os.environ.get("HELM_BIN")
    if explicit and Path(explicit).is_file():
        return explicit
    return shutil.which("helm")


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


def render(helm: str, values: dict[str, Any] | None = None, *,
           namespace: str = NAMESPACE, extra_args: tuple[str, ...] = ()) -> Rendered:
    """`helm template` the chart with `values`; raise RenderError with helm's stderr."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(values or {}, f)
        values_file = f.name
    try:
        proc = subprocess.run(
            [helm, "template", RELEASE, str(CHART), "--namespace", namespace,
             "--values", values_file, *extra_args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "HELM_CACHE_HOME": tempfile.gettempdir() + "/vgate-helm-cache",
                 "HELM_CONFIG_HOME": tempfile.gettempdir() + "/vgate-helm-config",
                 "HELM_DATA_HOME": tempfile.gettempdir() + "/vgate-helm-data"},
        )
    finally:
        os.unlink(values_file)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    objects = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return Rendered(proc.stdout, objects)
