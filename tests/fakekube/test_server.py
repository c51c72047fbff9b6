"""The kubelet stand-in's API-server side, checked with the real kubectl and with direct HTTP
calls: what it keeps emulating (authentication, impersonation, its static RBAC, objects,
watch, patch and apply, paging, logs) must behave like kube-apiserver."""

from __future__ import annotations

import gzip
import json
import queue
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakekube import Caller, EffectiveUser, FakeKube
from tests.support.pki import TestCA
from tests.support.tiers import tool_missing

KUBECTL = "/usr/bin/kubectl"
TOKENS = {
    "admin-token": Caller("admin", ("vgate:cluster-admin",)),
    "gw-token": Caller("gateway", (), may_impersonate=True),
    "view-token": Caller("viewer", ("vgate:view",)),
    "nobody-token": Caller("nobody", ()),
}
STATUS_401 = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def kube(ca: TestCA) -> Iterator[FakeKube]:
    with FakeKube(
        tokens=TOKENS, tls=ca.issue("apiserver", ["127.0.0.1"]), bookmark_interval=0.2
    ) as k:
        yield k


@pytest.fixture
def http(kube: FakeKube, ca: TestCA) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kube.url, verify=tls_context(ca), timeout=10) as c:
        yield c


def tls_context(ca: TestCA) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca.cert_file)


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


@pytest.fixture
def kubeconfig(tmp_path: Path, kube: FakeKube, ca: TestCA) -> Path:
    users = {"admin": "admin-token", "gw": "gw-token", "viewer": "view-token"}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "fake",
                "cluster": {"server": kube.url, "certificate-authority": str(ca.cert_file)},
            }
        ],
        "users": [{"name": u, "user": {"token": t}} for u, t in users.items()],
        "contexts": [
            {"name": u, "context": {"cluster": "fake", "user": u, "namespace": "default"}}
            for u in users
        ],
        "current-context": "admin",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    return path


Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kubectl_cmd(kubeconfig: Path, tmp_path: Path) -> Callable[..., list[str]]:
    if not Path(KUBECTL).exists() and not shutil.which("kubectl"):
        tool_missing("kubectl is not installed")

    def cmd(*args: str, context: str = "admin") -> list[str]:
        return [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "--context",
            context,
            "--cache-dir",
            str(tmp_path / "kubecache"),
            *args,
        ]

    return cmd


@pytest.fixture
def kubectl(kubectl_cmd: Callable[..., list[str]]) -> Kubectl:
    def run(
        *args: str, context: str = "admin", check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            kubectl_cmd(*args, context=context),
            capture_output=True,
            text=True,
            timeout=30,
            input=stdin,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    return run


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def line_reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """Lines of proc.stdout, read by a thread so tests can wait with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }


# ----- with kubectl ------------------------------------------------------------------------


@pytest.mark.integration
def test_kubectl_get_pods_chunked(kubectl: Kubectl, kube: FakeKube) -> None:
    for i in range(4):
        kube.put(pod(f"extra-{i}"))
    kube.clear_records()
    out = kubectl("get", "pods", "--chunk-size=1", "-o", "name").stdout.split()
    assert out == [f"pod/extra-{i}" for i in range(4)] + ["pod/web-0"]
    pages = [r.target for r in kube.records if b"/pods?" in r.target]
    assert len(pages) == 5
    assert all(b"limit=1" in t for t in pages)
    assert sum(b"continue=" in t for t in pages) == 4


@pytest.mark.integration
def test_kubectl_logs_and_tail(kubectl: Kubectl) -> None:
    assert kubectl("logs", "web-0").stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert kubectl("logs", "web-0", "--tail=2").stdout.splitlines() == ["line 4", "line 5"]


@pytest.mark.integration
def test_kubectl_logs_follow_streams_until_killed(
    kubectl_cmd: Callable[..., list[str]], kube: FakeKube
) -> None:
    proc = subprocess.Popen(
        kubectl_cmd("logs", "-f", "web-0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = line_reader(proc)
        got = [lines.get(timeout=3) for _ in range(8)]
    finally:
        proc.kill()
        proc.wait()
    assert got == [f"line {i}" for i in range(1, 9)]
    assert wait_for(lambda: kube.active_log_follows == 0, 3)


def _configmap(name: str, data: dict[str, str]) -> str:
    return json.dumps(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    )


@pytest.mark.integration
def test_kubectl_auth_whoami_through_impersonation(kubectl: Kubectl, kube: FakeKube) -> None:
    out = kubectl(
        "auth",
        "whoami",
        "--as",
        "alice",
        "--as-group",
        "g1",
        "--as-uid",
        "u1",
        "-o",
        "json",
        context="gw",
    ).stdout
    info = json.loads(out)["status"]["userInfo"]
    assert info == {"username": "alice", "uid": "u1", "groups": ["g1", "system:authenticated"]}
    rec = next(r for r in kube.records if b"selfsubjectreviews" in r.target)
    assert rec.identity == EffectiveUser("alice", "u1", ("g1", "system:authenticated"))
    assert rec.header("Impersonate-User") == ["alice"]
    assert rec.header("Impersonate-Group") == ["g1"]


@pytest.mark.integration
def test_kubectl_exec_is_handed_to_streams_and_forbidden_for_view(
    kubectl: Kubectl, kube: FakeKube
) -> None:
    assert kubectl("exec", "web-0", "--", "echo", "hi").stdout == "hi\n"
    assert any(b"/pods/web-0/exec" in r.target and r.status == 101 for r in kube.records)
    denied = kubectl("exec", "web-0", "--", "true", context="viewer", check=False)
    assert denied.returncode != 0
    assert (
        'pods "web-0" is forbidden: User "viewer" cannot create resource "pods/exec" '
        'in API group "" in the namespace "default"'
    ) in denied.stderr


# ----- direct HTTP -------------------------------------------------------------------------


def test_missing_or_unknown_token_is_401_status(http: httpx.Client, kube: FakeKube) -> None:
    for headers in ({}, bearer("wrong")):
        r = http.get("/api/v1/namespaces/default/pods", headers=headers)
        assert r.status_code == 401
        assert r.json() == STATUS_401
        assert r.headers["audit-id"]
    assert [rec.identity for rec in kube.records] == [None, None]


@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ({"Impersonate-Group": "g1"}, "[{Group  g1    }]"),
        ({"Impersonate-Uid": "u1"}, "[{UID  u1  authentication.k8s.io/v1  }]"),
        ({"Impersonate-Extra-Scopes": "s1"}, "[{UserExtra  s1  authentication.k8s.io/v1  scopes}]"),
    ],
)
def test_impersonation_without_user_is_rejected(
    http: httpx.Client, headers: dict[str, str], asked: str
) -> None:
    r = http.get("/api/v1/namespaces/default/pods", headers=bearer("gw-token", **headers))
    assert r.status_code == 500
    assert r.text == (
        f'Internal Server Error: "/api/v1/namespaces/default/pods": '
        f"requested {asked} without impersonating a user\n"
    )


def test_impersonation_needs_permission(http: httpx.Client) -> None:
    r = http.get(
        "/api/v1/namespaces/default/pods",
        headers=bearer("view-token", **{"Impersonate-User": "alice"}),
    )
    assert r.status_code == 403
    assert r.json()["message"] == (
        'users "alice" is forbidden: User "viewer" cannot '
        'impersonate resource "users" in API group "" at the '
        "cluster scope"
    )
    assert r.json()["details"] == {"name": "alice", "kind": "users"}


def test_impersonated_identity_with_extras_reaches_selfsubjectreview(
    http: httpx.Client,
) -> None:
    headers = [
        ("Authorization", "Bearer gw-token"),
        ("Impersonate-User", "alice"),
        ("Impersonate-Group", "a"),
        ("Impersonate-Group", "b"),
        ("Impersonate-Extra-Acme.com%2fProject", "p1"),
        ("Impersonate-Extra-Acme.com%2fProject", "P2"),
    ]
    r = http.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        headers=headers,
        json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert r.status_code == 201
    assert r.json()["status"]["userInfo"] == {
        "username": "alice",
        "groups": ["a", "b", "system:authenticated"],
        "extra": {"acme.com/project": ["p1", "P2"]},
    }


def test_rbac_denials_use_kube_messages(http: httpx.Client) -> None:
    r = http.get("/api/v1/namespaces/default/secrets", headers=bearer("view-token"))
    assert (r.status_code, r.json()["message"]) == (
        403,
        'secrets is forbidden: User "viewer" cannot list resource "secrets" in API group '
        '"" in the namespace "default"',
    )
    r = http.get("/api/v1/namespaces/default/pods", headers=bearer("nobody-token"))
    assert r.json()["reason"] == "Forbidden"
    r = http.get("/api/v1/namespaces/default/pods/web-0/log", headers=bearer("view-token"))
    assert (r.status_code, r.text) == (200, "".join(f"line {i}\n" for i in range(1, 6)))
    r = http.delete("/api/v1/namespaces/default/pods/web-0", headers=bearer("view-token"))
    assert r.status_code == 403


def test_gzip_only_when_asked_and_big(http: httpx.Client) -> None:
    url = "/api/v1/namespaces/default/pods"
    raw = http.get(url, headers=bearer("admin-token", **{"Accept-Encoding": "gzip"}))
    assert raw.headers["content-encoding"] == "gzip"
    assert json.loads(raw.content)["items"][0]["metadata"]["name"] == "web-0"  # httpx decoded
    plain = http.get(url, headers=bearer("admin-token", **{"Accept-Encoding": "identity"}))
    assert "content-encoding" not in plain.headers
    small = http.get("/healthz", headers=bearer("admin-token", **{"Accept-Encoding": "gzip"}))
    assert "content-encoding" not in small.headers


def test_gzip_body_is_really_gzip(kube: FakeKube, ca: TestCA) -> None:
    with (
        httpx.Client(verify=tls_context(ca)) as c,
        c.stream(
            "GET",
            kube.url + "/api/v1/namespaces/default/pods",
            headers=bearer("admin-token", **{"Accept-Encoding": "gzip"}),
        ) as r,
    ):
        body = b"".join(r.iter_raw())
    assert json.loads(gzip.decompress(body))["kind"] == "PodList"


def test_audit_id_is_echoed_or_generated(http: httpx.Client) -> None:
    r = http.get("/version", headers=bearer("admin-token", **{"Audit-ID": "my-audit"}))
    assert r.headers["audit-id"] == "my-audit"
    a = http.get("/version").headers["audit-id"]
    b = http.get("/version").headers["audit-id"]
    assert a and b and a != b


def test_etag_gives_304(http: httpx.Client) -> None:
    url = "/api/v1/namespaces/default/pods/web-0"
    etag = http.get(url, headers=bearer("admin-token")).headers["etag"]
    r = http.get(url, headers=bearer("admin-token", **{"If-None-Match": etag}))
    assert (r.status_code, r.content) == (304, b"")


def test_records_keep_headers_as_received(http: httpx.Client, kube: FakeKube) -> None:
    http.get(
        "/api/v1/namespaces/default/configmaps?x=%2F",
        headers=[
            ("Authorization", "Bearer admin-token"),
            ("X-Mixed-Case", "1"),
            ("x-mixed-case", "2"),
        ],
    )
    rec = kube.records[-1]
    assert rec.target == b"/api/v1/namespaces/default/configmaps?x=%2F"
    assert [(k, v) for k, v in rec.headers if k.lower() == b"x-mixed-case"] == [
        (b"X-Mixed-Case", b"1"),
        (b"x-mixed-case", b"2"),
    ]
    assert rec.status == 200


def test_unknown_path_404_and_wrong_method_405(http: httpx.Client) -> None:
    r = http.get("/api/v1/widgets", headers=bearer("admin-token"))
    assert (r.status_code, r.json()["reason"]) == (404, "NotFound")
    r = http.put("/api/v1/namespaces/default/pods", headers=bearer("admin-token"))
    assert (r.status_code, r.json()["reason"]) == (405, "MethodNotAllowed")


def test_watch_bookmarks_timeout_and_events(http: httpx.Client, kube: FakeKube) -> None:
    url = "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&timeoutSeconds=1"
    start = time.monotonic()
    events = []
    with http.stream("GET", url, headers=bearer("admin-token")) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        for line in r.iter_lines():
            events.append(json.loads(line))
            if len(events) == 1:
                kube.put(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": "w", "namespace": "default"},
                    }
                )
    assert 0.9 < time.monotonic() - start < 3
    types = [e["type"] for e in events]
    assert "BOOKMARK" in types and "ADDED" in types
    assert next(e for e in events if e["type"] == "ADDED")["object"]["metadata"]["name"] == "w"
    assert kube.active_watches == 0


def test_stop_ends_open_watches(kube: FakeKube, ca: TestCA) -> None:
    lines: list[str] = []
    with (
        httpx.Client(verify=tls_context(ca), timeout=5) as c,
        c.stream("GET", kube.url + "/api/v1/pods?watch=true", headers=bearer("admin-token")) as r,
    ):
        assert wait_for(lambda: kube.active_watches == 1)
        kube.stop()
        with pytest.raises(httpx.HTTPError):  # the server hung up mid-stream
            lines.extend(r.iter_lines())
    assert kube.active_watches == 0


def test_plain_http_and_large_bodies() -> None:
    with FakeKube(tokens=TOKENS) as kube, httpx.Client(base_url=kube.url, timeout=10) as c:
        assert kube.url.startswith("http://127.0.0.1:")
        big = "x" * (3 * 1024 * 1024)
        r = c.post(
            "/api/v1/namespaces/default/configmaps",
            headers=bearer("admin-token"),
            json={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "big"},
                "data": {"blob": big},
            },
        )
        assert r.status_code == 201
        assert kube.get("v1", "ConfigMap", "big")["data"]["blob"] == big
        r = c.post(
            "/api/v1/namespaces/default/configmaps",
            headers=bearer("admin-token"),
            content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        )
        assert r.status_code == 413


@pytest.mark.parametrize(
    ("content_type", "patch", "want"),
    [
        ("application/merge-patch+json", {"data": {"a": None, "c": "3"}}, {"b": "2", "c": "3"}),
        ("application/strategic-merge-patch+json", {"data": {"b": "9"}}, {"a": "1", "b": "9"}),
        ("application/json-patch+json", [{"op": "remove", "path": "/data/a"}], {"b": "2"}),
    ],
)
def test_patch_types(
    http: httpx.Client, kube: FakeKube, content_type: str, patch: Any, want: dict[str, str]
) -> None:
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "p", "namespace": "default"},
            "data": {"a": "1", "b": "2"},
        }
    )
    r = http.patch(
        "/api/v1/namespaces/default/configmaps/p",
        content=json.dumps(patch),
        headers=bearer("admin-token", **{"Content-Type": content_type}),
    )
    assert r.status_code == 200
    assert r.json()["data"] == want
    dry = http.patch(
        "/api/v1/namespaces/default/configmaps/p?dryRun=All",
        content=json.dumps({"data": {"z": "1"}}),
        headers=bearer("admin-token", **{"Content-Type": "application/merge-patch+json"}),
    )
    assert dry.json()["data"]["z"] == "1"
    assert "z" not in kube.get("v1", "ConfigMap", "p")["data"]


def test_server_side_apply_conflict_and_force(http: httpx.Client, kube: FakeKube) -> None:
    url = "/api/v1/namespaces/default/configmaps/owned?fieldManager={}&force={}"
    body = _configmap("owned", {"k": "one"})
    ct = {"Content-Type": "application/apply-patch+yaml"}
    assert (
        http.patch(
            url.format("a", "false"), content=body, headers=bearer("admin-token", **ct)
        ).status_code
        == 201
    )
    clash = http.patch(
        url.format("b", "false"),
        content=_configmap("owned", {"k": "two"}),
        headers=bearer("admin-token", **ct),
    )
    assert clash.status_code == 409
    assert clash.json()["message"] == (
        'Apply failed with 1 conflict: conflict with "a" using v1: .data.k'
    )
    forced = http.patch(
        url.format("b", "true"),
        content=_configmap("owned", {"k": "two"}),
        headers=bearer("admin-token", **ct),
    )
    assert (forced.status_code, forced.json()["data"]) == (200, {"k": "two"})


def test_watch_replays_from_resource_version(http: httpx.Client, kube: FakeKube) -> None:
    rv = http.get("/api/v1/namespaces/default/pods", headers=bearer("admin-token")).json()[
        "metadata"
    ]["resourceVersion"]
    kube.put(pod("later"))
    url = f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    with http.stream("GET", url, headers=bearer("admin-token")) as r:
        events = [json.loads(line) for line in r.iter_lines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "later")]
