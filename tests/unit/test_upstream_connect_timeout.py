"""The default `upstream.connect_timeout_seconds`: a tenant API server that takes longer
than a few seconds to finish its TLS handshake (heavy load) is still reached, as client-go
and kube-apiserver's own proxy would (their dialers wait 30 s); the default is written the
same in the model, the README and the chart. That a configured timeout answers 504 is
`test_proxy.py::test_silent_tenant_times_out_504_and_does_not_slow_others`."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.config.model import Upstream
from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config
from tests.support.pki import TestCA
from tests.support.scripted import server_context

ROOT = Path(__file__).resolve().parents[2]
DELAY = 6.0  # seconds before the upstream's handshake: more than the old 5 s default
BODY = b'{"kind":"List","items":[]}'


class SlowHandshakeUpstream:
    """A fault-injection TLS upstream: accepts TCP at once, starts its TLS handshake only
    `delay` seconds later (an API server too busy to answer), then answers one request."""

    def __init__(self, context: ssl.SSLContext, delay: float) -> None:
        self.context, self.delay = context, delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: stop
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
                )
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def slow(tmp_path_factory, issuer: CraftingIssuer) -> Iterator[GatewayThread]:
    """A gateway with the default `upstream:` settings in front of the slow upstream."""
    d = tmp_path_factory.mktemp("connect")
    ca = TestCA(d / "pki")
    leaf = ca.issue("upstream", ["127.0.0.1"])
    up = SlowHandshakeUpstream(server_context(leaf.cert_file, leaf.key_file), DELAY)
    config = viewer_config(
        d, issuer.issuer, {"busy": f"https://127.0.0.1:{up.port}"}, ca_file=ca.cert_file
    )
    try:
        with GatewayThread(d, config) as gw:
            yield gw
    finally:
        up.stop()


def test_a_tenant_slow_to_finish_its_handshake_is_reached_with_the_default(
    slow: GatewayThread, issuer: CraftingIssuer
) -> None:
    assert slow.config.upstream.connect_timeout_seconds == 30.0
    token = issuer.sign(issuer.claims())
    start = time.monotonic()
    r = httpx.get(
        f"{slow.url}/clusters/busy/api/v1/namespaces/default/configmaps",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    took = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert r.content == BODY
    assert DELAY <= took < 30.0


def test_the_default_is_written_the_same_everywhere() -> None:
    default = Upstream().connect_timeout_seconds
    assert default == 30.0  # client-go's and kube-apiserver's proxy dial timeout
    values = yaml.safe_load((ROOT / "deploy/helm/vgate/values.yaml").read_text())
    assert values["upstream"]["connectTimeoutSeconds"] == default
    readme = (ROOT / "README.md").read_text()
    assert f"  connect_timeout_seconds: {default:g} " in readme
