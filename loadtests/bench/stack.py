"""The systems under test, each a real process on 127.0.0.1: a static upstream (nginx),
nginx as a reverse proxy, and vgate (1 worker) with a real OIDC issuer and policies."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.quickstart.pki import ServingFiles, serving_certificate
from loadtests.bench import procs
from loadtests.bench.issuer import GROUP, LocalIssuer

REPO_ROOT = Path(__file__).resolve().parents[2]
#: whose gateway runs as "vgate": this checkout as it is, or its compiled copy (the bench's
#: `--build compiled`, the default: what the image ships; see loadtests/bench/compiled.py)
GATEWAY_CHECKOUT = REPO_ROOT


def use_gateway(checkout: Path) -> None:
    """Run every vgate of this bench from `checkout` (cwd and PYTHONPATH)."""
    global GATEWAY_CHECKOUT
    GATEWAY_CHECKOUT = checkout


TENANT = "bench"
LIST_PATH = "/api/v1/namespaces/default/pods?limit=500"


def pod_list(pods: int = 3) -> bytes:
    """A Kubernetes-shaped PodList of about 2 KB."""
    items = []
    for i in range(pods):
        items.append(
            {
                "metadata": {
                    "name": f"web-7d4b9c6f8-{i:05d}",
                    "namespace": "default",
                    "uid": f"6b1f3a52-0c1e-4c2b-9a53-{i:012d}",
                    "resourceVersion": str(1000 + i),
                    "creationTimestamp": "2026-11-01T10:00:00Z",
                    "labels": {"app": "web", "pod-template-hash": "7d4b9c6f8"},
                },
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "registry.example.com/web:1.4.2",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        }
                    ],
                    "nodeName": f"node-{i % 3}",
                    "restartPolicy": "Always",
                },
                "status": {
                    "phase": "Running",
                    "podIP": f"10.244.{i % 3}.{10 + i}",
                    "startTime": "2026-11-01T10:00:02Z",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    return json.dumps(
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "123456"},
            "items": items,
        },
        separators=(",", ":"),
    ).encode()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def _nginx_main(workdir: Path, name: str, workers: int = 1) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nmaster_process on;\nworker_processes {workers};\n"
        f"worker_rlimit_nofile {procs.NOFILE};\n"
        f"pid {workdir}/{name}.pid;\nerror_log {workdir}/{name}-error.log warn;\n"
        "events { worker_connections 40000; multi_accept on; }\n"
    )


def _nginx_http(workdir: Path, name: str) -> str:
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return (
        "access_log off; keepalive_requests 10000000; keepalive_timeout 120s;\n"
        f"client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;\n"
        f"fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;\n"
    )


def certificates(workdir: Path) -> ServingFiles:
    """One private CA and a serving certificate for 127.0.0.1 (and `localhost`), shared by
    every TLS listener of the bench: the upstream, nginx and vgate."""
    return serving_certificate(workdir / "pki", ["127.0.0.1", "localhost"])


def _tls_listen(tls: ServingFiles | None) -> str:
    """A second, TLS listener (`@TLSPORT@`) with the bench certificate; none without."""
    if tls is None:
        return ""
    return (
        "  listen 127.0.0.1:@TLSPORT@ ssl backlog=4096;\n"
        f"  ssl_certificate {tls.cert_file}; ssl_certificate_key {tls.key_file};\n"
    )


class Nginx:
    """One nginx master + 1 worker (or `workers`) with its own config, pinned to `cpu`.
    With a TLS listener in its config (`@TLSPORT@`), `tls_port` is that listener's port."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        server_block: str,
        cpu: set[int] | None,
        port: int | None = None,
        workers: int = 1,
    ):
        self.workdir, self.name, self.cpu = workdir, name, cpu
        self.port = port or procs.free_port()
        self.tls_port = procs.free_port() if "@TLSPORT@" in server_block else 0
        self.conf = workdir / f"{name}.conf"
        self.conf.write_text(
            _nginx_main(workdir, name, workers)
            + "http {\n"
            + _nginx_http(workdir, name)
            + server_block.replace("@PORT@", str(self.port)).replace(
                "@TLSPORT@", str(self.tls_port)
            )
            + "}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(self.workdir),
                "-c",
                str(self.conf),
                "-e",
                str(self.workdir / f"{self.name}-error.log"),
            ],
            preexec_fn=procs.preexec(self.cpu),
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.name}-stderr.log", "wb"),  # noqa: SIM115
        )
        procs.wait_port(self.port, self.proc, f"nginx ({self.name})")
        if self.tls_port:
            procs.wait_port(self.tls_port, self.proc, f"nginx ({self.name}, TLS)")
        return self

    @property
    def pids(self) -> list[int]:
        assert self.proc is not None
        return procs.tree(self.proc.pid)

    def stop(self) -> None:
        procs.stop(self.proc, sig=15)


def static_upstream(
    workdir: Path,
    issuer: LocalIssuer | None,
    cpu: set[int] | None,
    port: int | None = None,
    tls: ServingFiles | None = None,
) -> Nginx:
    """nginx serving the PodList for every API path (and the issuer's documents); with
    `tls`, on a second port over TLS too (as a real kube-apiserver serves)."""
    www = workdir / "www"
    www.mkdir(exist_ok=True)
    (www / "podlist.json").write_bytes(pod_list())
    issuer_locations = ""
    if issuer is not None:
        for rel, body in issuer.documents().items():
            (www / rel.replace("/", "_")).write_bytes(body)
            issuer_locations += (
                f"  location = /issuer/{rel} {{ default_type application/json; "
                f"alias {www}/{rel.replace('/', '_')}; }}\n"
            )
    block = (
        "server {\n  listen 127.0.0.1:@PORT@ backlog=4096;\n"
        + _tls_listen(tls)
        + f"  root {www}; etag off; if_modified_since off;\n"
        + issuer_locations
        + "  location / { default_type application/json;\n"
        '    add_header Cache-Control "no-cache, private";\n'
        "    try_files /podlist.json =404; }\n}\n"
    )
    return Nginx(workdir, "upstream", block, cpu, port)


#: a JSON line per request with what nginx knows of the fields of vgate's audit line
ACCESS_LOG_FORMAT = (
    '{"time":"$time_iso8601","request_id":"$request_id","source":"$remote_addr",'
    '"method":"$request_method","path":"$request_uri","status":$status,'
    '"bytes":$bytes_sent,"duration_s":$request_time}'
)


def nginx_proxy(
    workdir: Path,
    upstream_port: int,
    cpu: set[int] | None,
    *,
    name: str = "proxy",
    upstream_ca: Path | None = None,
    upstream_name: str = "localhost",
    tls: ServingFiles | None = None,
    access_log: bool = False,
) -> Nginx:
    """nginx as a reverse proxy: keep-alive upstream, unbuffered (watches must stream).
    With `upstream_ca` it speaks TLS to the upstream (`proxy_ssl`, certificate verified
    against that CA for `upstream_name`); with `tls` it also listens with TLS on
    `tls_port`. With `access_log` it writes a line per request as vgate writes its audit
    line (`ACCESS_LOG_FORMAT`, buffered like vgate's: flushed at 64 KB or 200 ms)."""
    scheme, upstream_tls = "http", ""
    if upstream_ca is not None:
        scheme = "https"
        upstream_tls = (
            f"    proxy_ssl_trusted_certificate {upstream_ca}; proxy_ssl_verify on;\n"
            f"    proxy_ssl_name {upstream_name}; proxy_ssl_session_reuse on;\n"
        )
    log_format, log_directive = "", ""
    if access_log:  # in the server block: `access_log off` at the http level cancels it
        log_format = f"log_format vgate_like escape=json '{ACCESS_LOG_FORMAT}';\n"
        log_directive = (
            f"  access_log {workdir / name}-access.log vgate_like buffer=64k flush=200ms;\n"
        )
    block = (
        log_format + f"upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 1024;\n"
        "  keepalive_requests 10000000; keepalive_timeout 120s; }\n"
        "server {\n  listen 127.0.0.1:@PORT@ backlog=4096;\n"
        + log_directive
        + _tls_listen(tls)
        + f"  location / {{ proxy_pass {scheme}://api; proxy_http_version 1.1;\n"
        '    proxy_set_header Connection ""; proxy_set_header Host $proxy_host;\n'
        "    proxy_buffering off; proxy_request_buffering off;\n"
        + upstream_tls
        + "    proxy_read_timeout 3600s; proxy_send_timeout 3600s; }\n}\n"
    )
    return Nginx(workdir, name, block, cpu)


class Vgate:
    """`python -m gateway serve` from `GATEWAY_CHECKOUT` (or from `checkout`, another one:
    the `--baseline` target), 1 worker unless `workers`, pinned to `cpu`. `roles` replaces the
    bench policy's roles; `extra` is merged into the config. With `upstream_ca` the tenant's
    upstream is `https://` (verified against that CA); with `tls` vgate serves TLS;
    `credential` is the token vgate presents upstream (default: a dummy the static
    upstream ignores)."""

    def __init__(
        self,
        workdir: Path,
        issuer_url: str,
        upstream_port: int,
        cpu: set[int] | None,
        name: str = "vgate",
        *,
        workers: int = 1,
        roles: dict | None = None,
        extra: dict | None = None,
        checkout: Path | None = None,
        upstream_ca: Path | None = None,
        tls: ServingFiles | None = None,
        credential: str | None = None,
    ) -> None:
        self.workdir, self.cpu, self.name = workdir, cpu, name
        self.checkout = checkout or GATEWAY_CHECKOUT
        self.scheme = "https" if tls is not None else "http"
        token_file = "tenant.token"
        if credential is not None:  # the tenant's real credential (a ServiceAccount token)
            token_file = f"{name}.token"
            (workdir / token_file).write_text(credential + "\n")
        tenant: dict = {
            "name": TENANT,
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "token_file": token_file,
        }
        if upstream_ca is not None:
            tenant.update(upstream=f"https://127.0.0.1:{upstream_port}", ca_file=str(upstream_ca))
        serving = (
            {}
            if tls is None
            else {"tls": {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file)}}
        )
        self.port = procs.free_port()
        policies = workdir / ("policies" if roles is None else f"policies-{name}")
        policies.mkdir(exist_ok=True)
        (policies / f"{TENANT}.yaml").write_text(
            yaml.safe_dump(
                {
                    "tenant": TENANT,
                    "roles": roles
                    or {
                        "view": {"groups": [f"oidc:{GROUP}"]},
                        "cluster-admin": {"groups": ["oidc:bench-admins"]},
                    },
                }
            )
        )
        (workdir / "tenant.token").write_text("bench-tenant-credential-" + "x" * 900 + "\n")
        self.config_file = workdir / f"{name}.yaml"
        self.config_file.write_text(
            yaml.safe_dump(
                {
                    "listen": {"host": "127.0.0.1", "port": self.port},
                    "workers": workers,
                    "routing": {"path_prefix": "/clusters"},
                    "oidc": {
                        "issuers": [
                            {
                                "issuer": issuer_url,
                                "audiences": ["vgate"],
                                "username_claim": "email",
                                "username_prefix": "oidc:",
                                "groups_claim": "groups",
                                "groups_prefix": "oidc:",
                                "algorithms": ["RS256"],
                            }
                        ]
                    },
                    "policies": policies.name,
                    "tenants": [tenant],
                    "audit": {"file": str(workdir / f"{name}-audit.log")},
                    "limits": {"shutdown_grace_seconds": 1},
                    **serving,
                    **(extra or {}),
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/clusters/{TENANT}"

    def start(self, timeout: float = 30.0) -> Vgate:
        env = {**os.environ, "PYTHONPATH": str(self.checkout)}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--log-level",
                "WARNING",
                "serve",
                "--config",
                str(self.config_file),
            ],
            cwd=self.checkout,
            env=env,
            preexec_fn=procs.preexec(self.cpu),
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{self.name}-stderr.log", "ab"),  # noqa: SIM115
        )
        procs.wait_port(self.port, self.proc, "vgate", timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready = signing keys loaded
            if http_status(self.port, "/readyz", tls=self.scheme == "https") == 200:
                return self
            time.sleep(0.1)
        raise RuntimeError("vgate did not become ready (signing keys not loaded?)")

    @property
    def pids(self) -> list[int]:
        """The serving process(es): with several workers, the parent and its children."""
        assert self.proc is not None
        return procs.tree(self.proc.pid)

    def stop(self) -> None:
        procs.stop(self.proc)

    def restart(self) -> None:
        """A fresh process: empty token cache, same port and config."""
        self.stop()
        self.start()


def http_status(port: int, path: str, *, tls: bool = False) -> int:
    """The status of `GET path` on 127.0.0.1:`port` (over TLS without checking the
    certificate when `tls`), or 0 when nothing answers."""
    import http.client
    import ssl

    with contextlib.suppress(OSError, http.client.HTTPException):
        if tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=2, context=ssl._create_unverified_context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    return 0
