"""Against a real kube-apiserver v1.28.7 (`tests/support/kube.py`: etcd and the API server
from `$KUBEBUILDER_ASSETS`, serving TLS, RBAC, an audit log at level Metadata written
before each answer): GET of one ConfigMap and LIST of 100, each direct, through nginx and
through vgate, all over TLS; then what each impersonation attribute costs the API server.

CPU per request is counted for the proxy (as in the other modes) and, over the same runs,
for the kube-apiserver process (`backend`), less what the API server burns when idle
(measured for a few seconds first: its own loops, lease and storage upkeep); etcd is not
counted. The API server, etcd and wrk share the load core; nginx and vgate run alone on
the proxy core.

- `direct-*`: a static-token user in group `vgate:view` (RBAC `get/list/watch`), what the
  user would be without a gateway; `direct-admin-get`: the API server's admin token
  (`system:masters`, which skips RBAC: a cheaper baseline than any real user); `nginx-*`:
  the same token through nginx (TLS both hops, `proxy_ssl`); `vgate-*`: an OIDC token
  through vgate, which presents its ServiceAccount token and impersonates the user (TLS
  both hops).
- `imp-*` rows: the ServiceAccount token straight to the API server with more and more
  `Impersonate-*` headers, each row adding one attribute to the one before it (the
  impersonated user is bound to the same role directly, so every row is authorized).
- with `--baseline`: `vgate-baseline-*`, the same through vgate from another checkout.
- WATCH relay: `WATCHES` watches on the namespace's ConfigMaps through each path
  (`watch_client --tls`), while one ConfigMap is patched `PATCHES_PER_S` times a second
  (the patch stamps its send time, so the client measures delivery latency); CPU per
  delivered event for the proxy and the API server.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from loadtests.bench import procs, stack
from loadtests.bench.issuer import LocalIssuer
from loadtests.bench.throughput import Summary, Target, interleaved
from loadtests.bench.watches import open_watches

NAMESPACE = "bench"
OBJECTS = 100
GET_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps/cm-000"
LIST_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
DIRECT_TOKEN = "vgate-bench-direct-token"
IMPERSONATED = "bench-impersonated"
#: the extras vgate sent before issue 16 (the `imp-*` rows and a `--baseline` vgate need them)
OLD_EXTRAS = ("vgate.io/issuer", "vgate.io/tenant", "vgate.io/request-id")
IDLE_SECONDS = 3.0
WATCHES = 100
PATCHES_PER_S = 20
TARGET_PROXY_SHARE = 0.20  # vgate's CPU per request ÷ the API server's
TARGET_IMPERSONATION = 1.20  # the API server's CPU per request through vgate ÷ direct


def unavailable() -> str | None:
    """Why the real API server cannot run here, or None."""
    from tests.support.kube import missing_binaries

    missing = missing_binaries()
    return f"needs {' and '.join(missing)} ($KUBEBUILDER_ASSETS)" if missing else None


def _objects() -> str:
    """Namespace `bench` with `OBJECTS` ConfigMaps of ~1.5 KB each."""
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}]
    for i in range(OBJECTS):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"cm-{i:03d}",
                    "namespace": NAMESPACE,
                    "labels": {"app": "bench", "shard": str(i % 10)},
                },
                "data": {f"key-{k}": f"value-{i}-{k}-" + "x" * 120 for k in range(10)},
            }
        )
    return yaml.safe_dump_all(docs)


def _bindings() -> str:
    """The impersonated user of the `imp-*` rows may read as `vgate:view` does."""
    return yaml.safe_dump(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "bench-impersonated-view"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "vgate-test-view",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": IMPERSONATED}
            ],
        }
    )


def _pin(pid: int, cpu: set[int] | None) -> None:
    """Pin every thread of `pid` (a Go program starts its threads early) to `cpu`."""
    if not cpu:
        return
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpu)
        except OSError:
            continue


AMPLIFY = 20  # groups or extras added at once: a cost too small to see once is seen x20
_AMPLIFIED_KEYS = tuple(f"bench.vgate.io/k{i:02d}" for i in range(AMPLIFY))

#: (row, header lines added to the previous row's, attributes added): one at a time what
#: vgate sends (up to `imp-+group`, what it sends now) and sent (`imp-+3-extras`), then
#: `AMPLIFY` more groups and extras for a cost per group and per extra
ATTRIBUTES: list[tuple[str, list[tuple[str, str]], int]] = [
    ("imp-user", [("Impersonate-User", IMPERSONATED)], 1),
    ("imp-+uid", [("Impersonate-Uid", "6b1f3a52-0c1e-4c2b-9a53-000000000001")], 1),
    ("imp-+group", [("Impersonate-Group", "vgate:view")], 1),
    (
        "imp-+3-extras",
        [
            ("Impersonate-Extra-vgate.io%2Fissuer", "https://idp.example.com"),
            ("Impersonate-Extra-vgate.io%2Ftenant", "bench"),
            ("Impersonate-Extra-vgate.io%2Frequest-id", "0b9e4c1a-7f32-4d8e-9a51-3c2d1e0f9a87"),
        ],
        3,
    ),
    (
        f"imp-+{AMPLIFY}-groups",
        [("Impersonate-Group", f"bench-group-{i:02d}") for i in range(AMPLIFY)],
        AMPLIFY,
    ),
    (
        f"imp-+{AMPLIFY}-extras",
        [(f"Impersonate-Extra-{k.replace('/', '%2F')}", "v") for k in _AMPLIFIED_KEYS],
        AMPLIFY,
    ),
]


def run(
    work: Path,
    *,
    rounds: int,
    seconds: float,
    connections: int = 10,
    baseline: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from tests.support.kube import (
        ADMIN_TOKEN,
        ApiServer,
        Etcd,
        impersonator_token,
        role_bindings,
    )

    kube = work / "kube"
    etcd = Etcd(kube / "etcd")
    api = ApiServer(kube / "api", etcd, tokens={DIRECT_TOKEN: ("bench-direct", ("vgate:view",))})
    port = procs.free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/issuer")
    docs = stack.static_upstream(work, issuer, procs.load_cpu(), port)
    proxy: stack.Nginx | None = None
    gates: list[stack.Vgate] = []
    try:
        t0 = time.monotonic()
        etcd.start()
        api.start()
        assert api.proc is not None and etcd.proc is not None
        for pid in (api.proc.pid, etcd.proc.pid):
            _pin(pid, procs.load_cpu())
        api.apply(role_bindings())
        api.apply(_bindings())
        api.apply(_objects())
        sa_token = impersonator_token(api, extras=OLD_EXTRAS + _AMPLIFIED_KEYS)
        log(
            f"kube-apiserver and etcd started, {OBJECTS} ConfigMaps created in "
            f"{time.monotonic() - t0:.1f}s"
        )
        docs.start()
        pki = stack.certificates(work)
        proxy = stack.nginx_proxy(
            work,
            api.port,
            procs.proxy_cpu(),
            name="proxy-kube",
            upstream_ca=api.ca_file,
            tls=pki,
            upstream_name="kubernetes.default.svc",
        ).start()
        for name, checkout in (("vgate", stack.GATEWAY_CHECKOUT), ("vgate-baseline", baseline)):
            if checkout is not None:
                gates.append(
                    stack.Vgate(
                        work,
                        issuer.issuer,
                        api.port,
                        procs.proxy_cpu(),
                        name=f"{name}-kube",
                        upstream_ca=api.ca_file,
                        tls=pki,
                        credential=sa_token,
                        checkout=checkout.resolve(),
                    ).start()
                )
        api_pid = api.proc.pid
        backend = lambda: [api_pid]  # noqa: E731
        time.sleep(1.0)
        idle0 = procs.cpu_seconds([api_pid])
        time.sleep(IDLE_SECONDS)
        idle = (procs.cpu_seconds([api_pid]) - idle0) / IDLE_SECONDS
        log(
            f"kube-apiserver idle: {idle * 100:.1f}% of a core (subtracted from its CPU per "
            "request)"
        )
        token = issuer.token(10**9)
        nginx_pids = proxy.pids
        targets: list[Target] = [
            Target(
                "direct-admin-get",
                f"{api.url}{GET_PATH}",
                lambda: [],
                token=ADMIN_TOKEN,
                backend=backend,
                direct="direct-get",
                nginx="nginx-get",
            )
        ]
        for what, path in (("get", GET_PATH), ("list", LIST_PATH)):
            direct = f"direct-{what}"
            targets += [
                Target(
                    direct,
                    f"{api.url}{path}",
                    lambda: [],
                    token=DIRECT_TOKEN,
                    backend=backend,
                    direct=direct,
                    nginx=f"nginx-{what}",
                ),
                Target(
                    f"nginx-{what}",
                    f"https://127.0.0.1:{proxy.tls_port}{path}",
                    lambda: nginx_pids,
                    token=DIRECT_TOKEN,
                    backend=backend,
                    direct=direct,
                    nginx=f"nginx-{what}",
                ),
            ]
            for gate in gates:
                gate_pids = gate.pids
                targets.append(
                    Target(
                        f"{gate.name.removesuffix('-kube')}-{what}",
                        f"{gate.base}{path}",
                        lambda pids=gate_pids: pids,
                        token=token,
                        backend=backend,
                        direct=direct,
                        nginx=f"nginx-{what}",
                    )
                )
        headers: list[tuple[str, str]] = []
        for name, more, _ in ATTRIBUTES:
            headers = [*headers, *more]
            targets.append(
                Target(
                    name,
                    f"{api.url}{GET_PATH}",
                    lambda: [],
                    token=sa_token,
                    backend=backend,
                    direct="direct-get",
                    nginx="nginx-get",
                    headers=headers,
                )
            )
        log(
            f"real kube-apiserver: {rounds} round(s) x {len(targets)} targets x {seconds:g}s, "
            f"{connections} connections, load {procs.load_average()}"
        )
        rows = interleaved(
            targets,
            rounds=rounds,
            seconds=seconds,
            connections=connections,
            warmup=min(2.0, seconds),
            log=log,
        )
        watch_paths = [
            ("direct", api.port, DIRECT_TOKEN, lambda: []),
            ("nginx", proxy.tls_port, DIRECT_TOKEN, lambda: nginx_pids),
        ]
        watch_paths += [
            (g.name.removesuffix("-kube"), g.port, token, lambda pids=g.pids: pids) for g in gates
        ]
        watch_rows = []
        for _ in range(rounds):
            for name, port, bearer, pids in watch_paths:
                row = _relay(
                    api,
                    port,
                    bearer,
                    pids(),
                    api_pid,
                    seconds,
                    work,
                    name,
                    prefix="/clusters/bench" if name.startswith("vgate") else "",
                )
                watch_rows.append(row)
                log(
                    f"  watch relay {name:<15} {row['received']:,}/{row['expected']:,} events "
                    f"p50 {row['event_p50_ms']:.2f} ms p99 {row['event_p99_ms']:.2f} ms, proxy "
                    f"{row['proxy_us']:.1f} µs/event, API server {row['api_us']:.1f} µs/event, "
                    f"errors {row['errors']}, load {procs.load_average()}"
                )
        return {
            "rows": rows,
            "connections": connections,
            "objects": OBJECTS,
            "api_idle": idle,
            "watch": watch_rows,
        }
    finally:
        for gate in gates:
            gate.stop()
        if proxy is not None:
            proxy.stop()
        docs.stop()
        api.stop()
        etcd.stop()


def _relay(
    api,
    port: int,
    token: str,
    pids: list[int],
    api_pid: int,
    seconds: float,
    work: Path,
    name: str,
    *,
    prefix: str,
) -> dict:
    """`WATCHES` watches through one path while a ConfigMap is patched at a fixed rate."""
    from tests.support.kube import ADMIN_TOKEN

    admin = http.client.HTTPSConnection(
        "127.0.0.1", api.port, timeout=10, context=ssl._create_unverified_context()
    )
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept": "application/json"}
    admin.request("GET", LIST_PATH + "?limit=1", headers=headers)
    rv = json.loads(admin.getresponse().read())["metadata"]["resourceVersion"]
    path = f"{prefix}{LIST_PATH}?watch=true&resourceVersion={rv}&allowWatchBookmarks=false"
    client = open_watches(
        [
            "--tls",
            "--port",
            str(port),
            "--path",
            path,
            "--n",
            str(WATCHES),
            "--hold",
            str(seconds + 2),
            "--token",
            token,
        ],
        work,
        timeout=60,
    )
    try:
        time.sleep(0.5)
        cpu0, api0 = procs.cpu_seconds(pids), procs.cpu_seconds([api_pid])
        patches, start = 0, time.monotonic()
        patch_headers = {**headers, "Content-Type": "application/merge-patch+json"}
        while time.monotonic() - start < seconds:
            due = start + patches / PATCHES_PER_S
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            body = json.dumps(
                {"metadata": {"annotations": {"bench.vgate.io/sent-ns": str(time.monotonic_ns())}}}
            )
            admin.request("PATCH", GET_PATH, body=body, headers=patch_headers)
            admin.getresponse().read()
            patches += 1
        time.sleep(0.5)  # the last events arrive
        cpu = procs.cpu_seconds(pids) - cpu0
        api_cpu = procs.cpu_seconds([api_pid]) - api0
        out, _ = client.communicate(timeout=seconds + 60)
    finally:
        procs.stop(client)
        admin.close()
    result = json.loads(out.decode().strip().splitlines()[-1])
    expected = patches * result["open"]
    return {
        "path": name,
        "watches": result["open"],
        "expected": expected,
        "received": result["events"],
        "event_p50_ms": result["event_p50_ms"],
        "event_p99_ms": result["event_p99_ms"],
        "errors": result["errors"],
        "proxy_us": cpu / expected * 1e6 if expected else 0.0,
        "api_us": api_cpu / expected * 1e6 if expected else 0.0,
    }


def api_us(s: Summary, idle: float) -> float:
    """The API server's CPU µs per request of a row, less its idle burn over the runs."""
    busy = sum(x.backend_s - idle * x.result.seconds for x in s.samples)
    return busy / s.requests * 1e6 if s.requests else 0.0


def table(result: dict) -> list[str]:
    rows: dict[str, Summary] = result["rows"]
    idle = result.get("api_idle", 0.0)
    api = {name: api_us(s, idle) for name, s in rows.items()}
    out = [
        "| target | req/s | p50 ms | p99 ms | proxy CPU µs/req | API server CPU µs/req "
        "| proxy ÷ API server | API server ÷ direct | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in rows.values():
        mine, theirs = api[s.name], api.get(s.direct, 0.0)
        ratio = f"{mine / theirs:.2f}" if theirs else "—"
        share = f"{s.cpu_us / mine:.2f}" if s.cpu_us and mine else "—"
        out.append(
            f"| {s.name} | {s.rps:,.0f} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | "
            f"{s.cpu_us:.1f} | {mine:.1f} | {share} | {ratio} | {s.errors} |"
        )
    out += [
        "",
        "What each impersonation attribute costs the API server (GET of one ConfigMap; "
        "each row adds its headers to the row before's; the first is against "
        "`direct-get`, a static-token user without impersonation):",
        "",
        "| row | headers added | API server CPU µs/req | added µs | per attribute µs |",
        "|---|---|---:|---:|---:|",
    ]
    previous = api.get("direct-get")
    for name, more, count in ATTRIBUTES:
        if name not in api or previous is None:
            continue
        names = sorted({h for h, _ in more})
        shown = f"`{names[0]}`" + (", …" if len(names) > 1 else "")
        added = api[name] - previous
        out.append(
            f"| {name} | {count} x {shown} | {api[name]:.1f} | "
            f"{added:+.1f} | {added / count:+.1f} |"
        )
        previous = api[name]
    if result.get("watch"):
        out += [
            "",
            f"WATCH relay: {WATCHES} watches per path, one ConfigMap patched "
            f"{PATCHES_PER_S} times a second (CPU over the patching seconds, per event "
            "expected = patches x open watches; the API server's includes serving the "
            "patches, alike for every path; medians over rounds):",
            "",
            "| path | watches | events received / expected | event p50 ms | event p99 ms "
            "| proxy CPU µs/event | API server CPU µs/event | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for path in dict.fromkeys(w["path"] for w in result["watch"]):
            runs = [w for w in result["watch"] if w["path"] == path]

            def med(key: str, runs: list[dict] = runs) -> float:
                return statistics.median(w[key] for w in runs)

            out.append(
                f"| {path} | {runs[0]['watches']} | "
                f"{sum(w['received'] for w in runs):,} / "
                f"{sum(w['expected'] for w in runs):,} | {med('event_p50_ms'):.2f} | "
                f"{med('event_p99_ms'):.2f} | {med('proxy_us'):.1f} | "
                f"{med('api_us'):.1f} | {sum(w['errors'] for w in runs)} |"
            )
    out += [
        "",
        f"The API server's idle burn, subtracted above: {idle * 100:.1f}% of a core. "
        f"Targets: vgate's CPU ÷ the API server's ≤ {TARGET_PROXY_SHARE:.2f}; the API "
        f"server's CPU through vgate ÷ direct ≤ {TARGET_IMPERSONATION:.2f}.",
    ]
    return out
