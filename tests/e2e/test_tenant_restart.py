"""A tenant's real kube-apiserver killed and started again under the gateway: an open watch
(HTTP/2 upstream) breaks at once so the client watches again, requests while it is down are
a 502 naming the tenant at once, and after the restart the first requests (safe and not)
succeed: no request is sent into a pooled connection of the dead process and lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.craft import CraftingIssuer
from tests.support.gateway_thread import GatewayThread, viewer_config
from tests.support.kube import ADMIN_TOKEN, ApiServer, Etcd

CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[ApiServer, GatewayThread, httpx.Client]]:
    base = tmp_path_factory.mktemp("restart")
    issuer = CraftingIssuer().start()
    with Etcd(base / "etcd") as etcd, ApiServer(base / "api", etcd, name="t1") as api:
        # the gateway's own credential is the API server's admin; the caller is `view`
        config = viewer_config(
            base / "gw", issuer.issuer, {"t1": api.url}, ca_file=api.ca_file, token=ADMIN_TOKEN
        )
        config["policies"] = str(base / "gw" / "policies")
        (base / "gw" / "policies" / "all.yaml").write_text(
            "tenant: '*'\nroles: {cluster-admin: {groups: [developers]}}\n"
        )
        api.kubectl(
            "create", "clusterrolebinding", "vgate-admin", "--clusterrole=cluster-admin",
            "--group=vgate:cluster-admin",
        )  # fmt: skip
        token = issuer.sign(issuer.claims())
        with (
            GatewayThread(base / "gw", config) as gw,
            httpx.Client(
                base_url=f"{gw.url}/clusters/t1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ) as client,
        ):
            yield api, gw, client
    issuer.down()


def metric(gw: GatewayThread, line: str) -> float:
    for text in httpx.get(f"{gw.metrics_url}/metrics").text.splitlines():
        if text.startswith(line + " "):
            return float(text.split()[-1])
    return 0.0


def test_a_killed_and_restarted_tenant(world) -> None:
    api, gw, client = world
    pods = "/api/v1/namespaces/default/configmaps"
    assert client.get(pods).status_code == 200  # a pooled HTTP/1.1 connection
    with client.stream("GET", f"{pods}?watch=1&allowWatchBookmarks=false") as watch:
        assert watch.status_code == 200
        assert metric(gw, "vgate_upstream_http2_streams") == 1  # the watch went over h2
        assert api.proc is not None
        api.proc.send_signal(signal.SIGKILL)
        api.proc.wait(10)
        started = time.monotonic()
        with pytest.raises(httpx.HTTPError):  # a broken stream, not a clean end
            for _ in watch.iter_raw():
                pass
        broke_after = time.monotonic() - started
    assert broke_after < 2.0, broke_after

    started = time.monotonic()
    down = client.get(pods)
    assert down.status_code == 502, down.text
    assert down.json()["message"] == "the API server of tenant t1 is unreachable"
    assert time.monotonic() - started < 1.0
    assert metric(gw, 'vgate_upstream_errors_total{tenant="t1"}') >= 1

    api.start(same_port=True)
    started = time.monotonic()
    assert client.get(pods).status_code == 200
    created = client.post(pods, json=CONFIGMAP)
    assert created.status_code == 201, created.text
    with client.stream("GET", f"{pods}?watch=1&resourceVersion=0") as watch:
        assert watch.status_code == 200
        assert b'"after"' in next(watch.iter_raw())
    assert time.monotonic() - started < 5.0
    assert metric(gw, "vgate_upstream_http2_streams") == 0
