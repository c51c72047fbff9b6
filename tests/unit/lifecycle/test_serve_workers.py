"""`vgate serve` with 2 worker processes: every worker follows the store within a poll."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

from gateway.lifecycle.model import RouteInfo, TenantSpec
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from tests.support.craft import CraftingIssuer
from tests.support.scripted import ScriptedUpstream
from tests.support.served import ServedGateway


@pytest.fixture
def served(tmp_path):
    issuer = CraftingIssuer().start()
    upstream = ScriptedUpstream()
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "all.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["developers"]}}})
    )
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "workers": 2,
        "routing": {"base_domain": "k8s.test", "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {"issuer": issuer.issuer, "audiences": ["vgate"], "username_claim": "email"}
            ]
        },
        "audit": {"file": str(tmp_path / "audit.log")},
        "policies": str(tmp_path / "policies"),
        "lifecycle": {"manage": False, "poll_seconds": 0.2},
    }
    (tmp_path / "vgate.yaml").write_text(yaml.safe_dump(config))
    token = issuer.sign(issuer.claims())
    try:
        with ServedGateway(tmp_path / "vgate.yaml", workers=2) as served:
            yield tmp_path, served.port, token, upstream
    finally:
        upstream.stop()
        issuer.down()


def test_every_worker_sees_create_and_delete(served):
    tmp, port, token, upstream = served
    (tmp / "token").write_text("secret\n")
    store = SQLiteTenantStore(tmp / "tenants.db")
    record = asyncio.run(store.create(TenantSpec(name="t1", admin_groups=["a"])))
    route = RouteInfo(server=f"http://127.0.0.1:{upstream.port}", token_file=str(tmp / "token"))
    asyncio.run(
        store.update_status("t1", record.status.model_copy(update={"route": route}), record.version)
    )

    def statuses(n=8):  # fresh connections spread over both workers
        codes = []
        for _ in range(n):
            with httpx.Client(
                headers={"Authorization": f"Bearer {token}", "Connection": "close"}
            ) as c:
                r = c.get(f"http://127.0.0.1:{port}/clusters/t1/api")
                codes.append(r.status_code)
        return codes

    deadline = time.monotonic() + 3
    while statuses() != [200] * 8:
        assert time.monotonic() < deadline, f"route did not reach every worker: {statuses()}"
        time.sleep(0.05)
    record = asyncio.run(store.get("t1"))
    start = time.monotonic()
    asyncio.run(store.delete("t1", record.version))
    while statuses() != [404] * 8:
        assert time.monotonic() - start < 2, "a worker kept a deleted tenant"
        time.sleep(0.05)
    asyncio.run(store.close())
