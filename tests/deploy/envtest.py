"""A real kube-apiserver + etcd from $KUBEBUILDER_ASSETS (controller-runtime's envtest layout),
on loopback ports, with a static admin token. For the e2e tier only."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.lifecycle.assemble import DEFAULT_ASSETS

ADMIN_TOKEN = "vgate-e2e-admin-token"  # a throwaway token for a throwaway server


def assets_dir() -> Path:
    """envtest's convention: $KUBEBUILDER_ASSETS, else the lifecycle's default folder."""
    return Path(os.environ.get("KUBEBUILDER_ASSETS") or DEFAULT_ASSETS)


def missing_binaries() -> list[str]:
    return [b for b in ("kube-apiserver", "etcd") if not (assets_dir() / b).is_file()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, deadline: float) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not ready")


@contextmanager
def api_server(workdir: Path) -> Iterator[Path]:
    """Start etcd and kube-apiserver; yield a kubeconfig path for the admin token."""
    assets = assets_dir()
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key = workdir / "sa.key"
    sa_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption()))
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    procs: list[subprocess.Popen[bytes]] = []
    log = (workdir / "control-plane.log").open("wb")
    try:
        procs.append(subprocess.Popen([
            str(assets / "etcd"), "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
        ], stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([
            str(assets / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
            "--bind-address", "127.0.0.1", "--secure-port", str(api_port),
            "--cert-dir", str(workdir / "certs"),
            "--token-auth-file", str(tokens),
            "--authorization-mode", "RBAC",
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(sa_key),
            "--service-account-signing-key-file", str(sa_key),
            "--allow-privileged=true",
        ], stdout=log, stderr=subprocess.STDOUT))
        _wait_ready(f"https://127.0.0.1:{api_port}/readyz", time.monotonic() + 60)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: e2e, cluster: {{server: 'https://127.0.0.1:{api_port}', "
            "insecure-skip-tls-verify: true}}]\n"
            f"users: [{{name: admin, user: {{token: {ADMIN_TOKEN}}}}}]\n"
            "contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]\n"
            "current-context: e2e\n")
        yield kubeconfig
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
