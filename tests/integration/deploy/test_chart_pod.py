"""The pod as the chart describes it, with a real gateway: the rendered config, read from the
pod's mounts, starts vgate, and the Deployment's probes get the answers the kubelet needs."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import httpx
import yaml

from tests.support.deploy import mounts
from tests.support.deploy.chart import render
from tests.support.gateway_thread import GatewayThread
from tests.support.pki import TestCA

# An issuer on a closed loopback port: the gateway starts without signing keys, and nothing
# leaves the machine.
VALUES = {
    "oidc": {"issuers": [{"issuer": "https://127.0.0.1:1", "audiences": ["vgate"]}]},
    "policies": {"inline": {"all.yaml": {"tenant": "*", "roles": {}}}},
}


def test_probes_answer_from_a_gateway_started_with_the_rendered_config(
    helm: str, tmp_path: Path
) -> None:
    out = render(helm, VALUES)
    root = tmp_path / "pod"
    config_path = mounts.materialize(out, root)
    # The tls Secret's files, as the kubelet would project them.
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("vgate", ["vgate.example.com", "127.0.0.1"])
    shutil.copy(leaf.cert_file, root / "etc/vgate/tls/tls.crt")
    shutil.copy(leaf.key_file, root / "etc/vgate/tls/tls.key")
    config = yaml.safe_load(config_path.read_text())
    assert config["listen"] == {"host": "0.0.0.0", "port": 8443}
    config.pop("listen")  # GatewayThread binds 127.0.0.1 on an ephemeral port

    container = out.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    with (
        GatewayThread(tmp_path / "run", config) as gw,
        httpx.Client(verify=ssl.create_default_context(cafile=ca.cert_file), timeout=5) as client,
    ):

        def probe(name: str) -> httpx.Response:
            spec = container[name]["httpGet"]
            assert spec["port"] == "https"
            return client.get(f"{spec['scheme'].lower()}://127.0.0.1:{gw.port}{spec['path']}")

        assert probe("livenessProbe").status_code == 200
        assert probe("startupProbe").status_code == 200
        ready = probe("readinessProbe")
        assert ready.status_code == 503
        assert ready.text == "not ready: signing keys not loaded"
