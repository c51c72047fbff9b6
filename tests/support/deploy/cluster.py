"""The real API server the chart's e2e tests apply to (tests/support/kube.py), and what helm
learns from a cluster on `helm install`: its version (/version) and the APIs it serves
(discovery), as a KubeTarget for `helm template`."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.deploy.chart import CHART, KubeTarget, helm_env, values_file
from tests.support.kube import ADMIN_TOKEN, ApiServer, assets_dir

# ValidatingAdmissionPolicy on 1.28/1.29: beta, off by default (GA and on from 1.30). The chart's
# lifecycle manager needs it, so the test cluster runs with it, as such an operator's would.
ADMISSION_POLICY_BETA_FLAGS = (
    "--feature-gates=ValidatingAdmissionPolicy=true",
    "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
)


def binary_version(binary: Path | None = None) -> tuple[int, int]:
    """(major, minor) of the kube-apiserver binary (`--version`: "Kubernetes v1.28.7")."""
    out = subprocess.run(
        [str(binary or assets_dir() / "kube-apiserver"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    found = re.search(r"v(\d+)\.(\d+)\.", out)
    if found is None:
        raise RuntimeError(f"kube-apiserver --version printed {out!r}")
    return int(found[1]), int(found[2])


def admission_policy_flags(binary: Path | None = None) -> tuple[str, ...]:
    """The flags that make this API server serve ValidatingAdmissionPolicy (none from 1.30)."""
    return ADMISSION_POLICY_BETA_FLAGS if binary_version(binary) < (1, 30) else ()


def get(api: ApiServer, path: str) -> Any:
    """GET `path` as the API server's admin, parsed JSON."""
    context = ssl.create_default_context(cafile=str(api.ca_file))
    request = urllib.request.Request(
        f"{api.url}{path}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as resp:
        return json.load(resp)


def target_of(api: ApiServer) -> KubeTarget:
    """What `helm install` sees of `api`: its gitVersion, and every group/version and
    group/version/Kind it serves (helm's GetVersionSet), for --kube-version/--api-versions."""
    served: list[str] = []

    def add(group_version: str, prefix: str) -> None:
        served.append(group_version)
        for resource in get(api, f"{prefix}/{group_version}")["resources"]:
            served.append(f"{group_version}/{resource['kind']}")

    for version in get(api, "/api")["versions"]:
        add(version, "/api")
    for group in get(api, "/apis")["groups"]:
        for version in group["versions"]:
            add(version["groupVersion"], "/apis")
    return KubeTarget(get(api, "/version")["gitVersion"], tuple(dict.fromkeys(served)))


def helm(
    helm_bin: str, api: ApiServer, *args: str, namespace: str
) -> subprocess.CompletedProcess[str]:
    """`helm <args>` against `api` as its admin: helm asks the server for its version and APIs
    itself, as on a real cluster."""
    return subprocess.run(
        [helm_bin, *args, "--namespace", namespace, "--kubeconfig", str(api.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=120,
        env=helm_env(),
    )


def helm_install(
    helm_bin: str, api: ApiServer, release: str, namespace: str, values: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """`helm install` of the chart with `values` into `namespace` (created when missing)."""
    with values_file(values) as path:
        return helm(
            helm_bin,
            api,
            "install",
            release,
            str(CHART),
            "--create-namespace",
            "--values",
            str(path),
            namespace=namespace,
        )
