"""The build the image ships: the request path compiled by mypyc (setup.py with
VGATE_COMPILE=1, `gateway.build_info.REQUEST_PATH`), made from this checkout by
loadtests/bench/compiled.py and cached between runs (the first build takes a minute or two).

The unit tier runs against it, and real kubectl goes through its `vgate serve` to real
kube-apiservers. A build that fails fails here; only a machine without a C compiler or
Python's headers skips (and CI, VGATE_REQUIRE_E2E=1, fails instead)."""

from __future__ import annotations

import json
import os
import select
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.build_info import REQUEST_PATH
from loadtests.bench.compiled import build, compiled_modules, missing_toolchain
from tests.e2e.conftest import require_binaries, served_world
from tests.support.kubectl_world import World, ok, wait_for
from tests.support.tiers import tool_missing

pytestmark = [pytest.mark.slow]

GATEWAY = "system:serviceaccount:default:vgate"
ALICE = "oidc:alice@example.com"
UNIT_TIER_TIMEOUT = 900  # seconds: ~2.5 min on 2 cores


@pytest.fixture(scope="module")
def compiled() -> Path:
    """The root of the compiled copy, with every request-path module (and only those) a
    native extension."""
    why = missing_toolchain()
    if why:
        tool_missing(why)
    try:
        root = build(log=lambda line: print(line, file=sys.stderr))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    assert sorted(compiled_modules(root)) == sorted(REQUEST_PATH)
    return root


def in_copy(root: Path) -> dict[str, str]:
    """The environment of a process that must import the copy's gateway (and tests)."""
    return {**os.environ, "PYTHONPATH": str(root)}


def test_unit_tier_passes_on_the_compiled_build(compiled: Path) -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gateway.build_info import request_path_build; print(request_path_build())",
        ],
        cwd=compiled,
        env=in_copy(compiled),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "compiled", probe.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit"],
        cwd=compiled,
        env=in_copy(compiled),
        capture_output=True,
        text=True,
        timeout=UNIT_TIER_TIMEOUT,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]


@pytest.fixture(scope="module")
def world(compiled: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """`vgate serve` of the compiled copy (two workers) in front of real API servers."""
    require_binaries()
    with served_world(tmp_path_factory.mktemp("compiled-e2e"), checkout=compiled) as w:
        yield w


def test_kubectl_through_the_compiled_gateway(world: World) -> None:
    listening = [x for x in world.gateway.lines if "vgate listening on" in x]
    assert len(listening) == 2 and all(
        x.rstrip().endswith(f"version {__version__}, request path compiled") for x in listening
    ), listening
    metrics_port = world.gateway_config["listen"]["metrics_port"]
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    build_info = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "vgate_build_info"
    ]
    assert build_info == [({"version": __version__, "request_path": "compiled"}, 1.0)]

    # who am I, a get, a create seen by a watch: each ran as Alice, impersonated
    whoami = world.kubectl("tenant1", "alice", "auth", "whoami", "-o", "json", "-v=8")
    assert json.loads(ok(whoami))["status"]["userInfo"]["username"] == ALICE
    ran = world.ran_as("tenant1", whoami, "selfsubjectreviews")
    assert (ran.user, ran.authenticated_as, ran.impersonated) == (ALICE, GATEWAY, True)
    get = world.kubectl("tenant1", "alice", "get", "pod", "web-0", "-o", "name", "-v=8")
    assert ok(get).strip() == "pod/web-0"
    assert world.ran_as("tenant1", get, "/pods/web-0").user == ALICE
    audit = world.tenants["tenant1"].audit
    watch = subprocess.Popen(
        world.kubectl_argv("tenant1", "alice", ["get", "configmaps", "--watch-only", "-o", "name"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: audit.open_requests("watch", GATEWAY), timeout=10)
        create = world.kubectl(
            "tenant1", "alice", "create", "configmap", "compiled", "--from-literal=a=b", "-v=8"
        )
        ok(create)
        assert world.ran_as("tenant1", create, "/configmaps").user == ALICE
        assert watch.stdout is not None
        assert select.select([watch.stdout], [], [], 15)[0], "the watch received no event"
        assert watch.stdout.readline().strip() == b"configmap/compiled"
    finally:
        watch.terminate()
        watch.wait(10)
    assert wait_for(lambda: not audit.open_requests("watch", GATEWAY), timeout=10)
    [watched] = [e for e in audit.matching(verb="watch") if e["user"]["username"] == GATEWAY]
    assert watched["impersonatedUser"]["username"] == ALICE

    # refused as on the interpreted build: the client's own impersonation, a bad token
    refused = world.kubectl("tenant1", "alice", "--as", "someone", "get", "pods")
    assert refused.returncode != 0 and b"impersonation" in refused.stderr
    tls = ssl.create_default_context(cafile=str(world.ca.cert_file))
    pods = f"{world.gateway.url}/clusters/tenant1/api/v1/namespaces/default/pods"
    as_someone = httpx.get(
        pods,
        headers={"Authorization": f"Bearer {world.token('alice')}", "Impersonate-User": "someone"},
        verify=tls,
        timeout=10,
    )
    assert as_someone.status_code == 403
    assert as_someone.json()["message"] == (
        "impersonation (kubectl --as/--as-group/--as-uid) is not allowed through the vgate gateway"
    )
    assert not audit.has(as_someone.headers["Audit-ID"]), "it reached the API server"
    bad = httpx.get(pods, headers={"Authorization": "Bearer not-a-token"}, verify=tls, timeout=10)
    assert bad.status_code == 401
    assert bad.headers["Content-Type"] == "application/json"
    assert bad.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="vgate", error="invalid_token"'
    assert not audit.has(bad.headers["Audit-ID"])
