"""Kubeconfigs without secrets: the user is the `vgate login` exec credential plugin.

Used by the portal (downloads, paste-ready commands) and by `vgate kubeconfig`.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass

import yaml

EXEC_API_VERSION = "client.authentication.k8s.io/v1"


@dataclass(frozen=True)
class KubeconfigSpec:
    """Everything a tenant's kubeconfig holds."""

    tenant: str
    server: str  # https://tenant1.k8s.example.com or …/clusters/tenant1
    issuer: str
    client_id: str
    ca_pem: bytes | None = None  # the gateway's CA; None = the system's trust store
    command: str = "vgate"
    issuer_ca_pem: bytes | None = None

    @property
    def name(self) -> str:
        return f"vgate-{self.tenant}"

    def login_args(self) -> list[str]:
        args = ["login", f"--issuer={self.issuer}", f"--client-id={self.client_id}"]
        if self.issuer_ca_pem:
            args.append(f"--issuer-ca-data={base64.b64encode(self.issuer_ca_pem).decode()}")
        return args


def kubeconfig(spec: KubeconfigSpec) -> dict:
    """A complete kubeconfig (one cluster, user and context, all named `vgate-<tenant>`)."""
    cluster: dict = {"server": spec.server}
    if spec.ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(spec.ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": spec.name, "cluster": cluster}],
        "users": [
            {
                "name": spec.name,
                "user": {
                    "exec": {
                        "apiVersion": EXEC_API_VERSION,
                        "command": spec.command,
                        "args": spec.login_args(),
                        "interactiveMode": "IfAvailable",
                        "provideClusterInfo": False,
                    }
                },
            }
        ],
        "contexts": [{"name": spec.name, "context": {"cluster": spec.name, "user": spec.name}}],
        "current-context": spec.name,
        "preferences": {},
    }


def kubeconfig_yaml(spec: KubeconfigSpec) -> str:
    return yaml.safe_dump(kubeconfig(spec), sort_keys=False)


def _commands(spec: KubeconfigSpec) -> list[list[str]]:
    """kubectl config calls that add cluster/user/context and switch to it, leaving every
    other entry of the existing kubeconfig alone."""
    name = spec.name
    calls = [["kubectl", "config", "set-cluster", name, f"--server={spec.server}"]]
    if spec.ca_pem:
        calls.append(
            [
                "kubectl",
                "config",
                "set",
                f"clusters.{name}.certificate-authority-data",
                base64.b64encode(spec.ca_pem).decode(),
            ]
        )
    calls.append(
        [
            "kubectl",
            "config",
            "set-credentials",
            name,
            f"--exec-api-version={EXEC_API_VERSION}",
            f"--exec-command={spec.command}",
            *(f"--exec-arg={a}" for a in spec.login_args()),
            "--exec-interactive-mode=IfAvailable",
        ]
    )
    calls.append(["kubectl", "config", "set-context", name, f"--cluster={name}", f"--user={name}"])
    calls.append(["kubectl", "config", "use-context", name])
    return calls


def bash_command(spec: KubeconfigSpec) -> str:
    """One line for bash/zsh."""
    return " && ".join(shlex.join(call) for call in _commands(spec))


def _ps_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "-_./:=" for c in arg) and not arg.startswith("-"):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def powershell_command(spec: KubeconfigSpec) -> str:
    """One line for PowerShell (5.1 and 7): calls separated by `;`, arguments single-quoted."""
    return "; ".join(" ".join(_ps_quote(a) for a in call) for call in _commands(spec))
