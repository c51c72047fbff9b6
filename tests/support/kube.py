"""Real kube-apiservers for tests: etcd + kube-apiserver v1.28.7 from `$KUBEBUILDER_ASSETS`
(controller-runtime's envtest layout; `../shared/kube/install.sh` puts them there).

One etcd can back several API servers, each under its own `--etcd-prefix`: each is an
isolated cluster ("a virtual cluster" for the gateway's tests). Every API server writes an
audit log (level Metadata), so a test can ask who a request really ran as::

    with Etcd(tmp / "etcd") as etcd, ApiServer(tmp / "t1", etcd) as api:
        api.kubectl("get", "ns")
        api.audit.ran_as(audit_id)   # -> RanAs(user, uid, groups, extra)

`require_kube()` skips (with one line saying why) when the binaries are absent, or fails
when `VGATE_REQUIRE_E2E=1` (CI), so the e2e tiers never silently skip there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.lifecycle.provisioning.local import AUDIT_POLICY  # the same as a tenant's
from tests.support.tiers import tool_missing

DEFAULT_ASSETS = Path("/usr/local/kubebuilder/bin")
ADMIN_TOKEN = "vgate-test-admin-token"  # a throwaway token for throwaway servers
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


def assets_dir() -> Path:
    """envtest's convention: $KUBEBUILDER_ASSETS, else /usr/local/kubebuilder/bin."""
    return Path(os.environ.get("KUBEBUILDER_ASSETS") or DEFAULT_ASSETS)


def missing_binaries() -> list[str]:
    return [b for b in ("kube-apiserver", "etcd") if not (assets_dir() / b).is_file()]


def require_kube(*, kubectl: bool = False) -> None:
    """Skip (one line saying why) when the real API server cannot run here; with
    VGATE_REQUIRE_E2E=1 (set by CI) fail instead."""
    missing = missing_binaries()
    why = ""
    if missing:
        why = (
            f"needs {' and '.join(missing)} in {assets_dir()} "
            "(run ../shared/kube/install.sh, or set $KUBEBUILDER_ASSETS)"
        )
    elif kubectl and not Path(KUBECTL).exists():
        why = "needs kubectl"
    if why:
        tool_missing(f"real kube-apiserver tier {why}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Etcd:
    """One etcd on loopback ports, data in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Etcd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, peer = free_port(), free_port()
        log = (self.workdir / "etcd.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(assets_dir() / "etcd"),
                "--data-dir",
                str(self.workdir / "data"),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{peer}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> Etcd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class RanAs:
    """The identity a request ran as, from the API server's audit event: the impersonated
    user when there was impersonation, else the authenticated one."""

    user: str
    uid: str
    groups: tuple[str, ...]
    extra: dict[str, list[str]]
    impersonated: bool
    authenticated_as: str  # who authenticated (the gateway's own identity when impersonating)
    event: dict[str, Any] = field(compare=False, repr=False)


class AuditLog:
    """The audit log of one API server (JSON lines, stage ResponseComplete)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line still being written
        return out

    def find(self, audit_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The final event of the request with `audit_id` (waits for the log to have it)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in reversed(self.events()):
                if event.get("auditID") == audit_id and event.get("stage") in (
                    "ResponseComplete",
                    "Panic",
                ):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no audit event {audit_id} in {self.path}")
            time.sleep(0.1)

    def ran_as(self, audit_id: str, timeout: float = 10.0) -> RanAs:
        return ran_as(self.find(audit_id, timeout))

    def has(self, audit_id: str) -> bool:
        """Whether any event of the request with `audit_id` was logged (the log is written
        before the answer leaves: `--audit-log-mode blocking`)."""
        return any(e.get("auditID") == audit_id for e in self.events())

    def open_requests(self, verb: str, user: str) -> set[str]:
        """Audit IDs of `verb` requests authenticated as `user` that started answering and
        have not completed: watches and other streams still open at the API server."""
        started: set[str] = set()
        done: set[str] = set()
        for e in self.events():
            if e.get("verb") != verb or (e.get("user") or {}).get("username") != user:
                continue
            if e.get("stage") == "ResponseStarted":
                started.add(e["auditID"])
            elif e.get("stage") in ("ResponseComplete", "Panic"):
                done.add(e["auditID"])
        return started - done

    def matching(self, **where: Any) -> list[dict[str, Any]]:
        """Final events whose top-level fields equal `where` (e.g. verb="create")."""
        return [
            e
            for e in self.events()
            if e.get("stage") == "ResponseComplete" and all(e.get(k) == v for k, v in where.items())
        ]


def ran_as(event: dict[str, Any]) -> RanAs:
    who = event.get("impersonatedUser") or event.get("user") or {}
    return RanAs(
        user=who.get("username", ""),
        uid=who.get("uid", ""),
        groups=tuple(who.get("groups") or ()),
        extra=dict(who.get("extra") or {}),
        impersonated="impersonatedUser" in event,
        authenticated_as=(event.get("user") or {}).get("username", ""),
        event=event,
    )


class ApiServer:
    """One kube-apiserver on a loopback port, on `etcd` under its own prefix.

    Authentication: a static token file (`ADMIN_TOKEN` is in `system:masters`; `tokens`
    adds more: token → (user, groups)), ServiceAccount tokens, and client certificates
    signed by `client_ca_file` when given. Authorization: RBAC. Audit: every request at
    level Metadata into `audit_log`."""

    def __init__(
        self,
        workdir: Path,
        etcd: Etcd,
        *,
        name: str | None = None,
        tokens: dict[str, tuple[str, tuple[str, ...]]] | None = None,
        extra_args: tuple[str, ...] = (),
        binary: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.etcd = etcd
        self.name = name or workdir.name
        self.tokens = dict(tokens or {})
        self.extra_args = extra_args
        self.binary = binary or assets_dir() / "kube-apiserver"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.audit = AuditLog(workdir / "audit.log")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The API server's self-signed serving certificate (its own CA)."""
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def start(self, timeout: float = 60.0, *, same_port: bool = False) -> ApiServer:
        """Start (or, with `same_port`, start again where it listened before: a restart)."""
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        self.port = self.port if same_port and self.port else free_port()
        sa_key = w / "sa.key"
        if not sa_key.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            sa_key.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )
        lines = [f'{ADMIN_TOKEN},admin,admin,"system:masters"']
        lines += [
            f'{tok},{user},{user},"{",".join(groups)}"'
            for tok, (user, groups) in self.tokens.items()
        ]
        (w / "tokens.csv").write_text("\n".join(lines) + "\n")
        (w / "audit-policy.yaml").write_text(AUDIT_POLICY)
        log = (w / "apiserver.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "--etcd-servers",
                self.etcd.url,
                "--etcd-prefix",
                f"/{self.name}",
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--cert-dir",
                str(w / "certs"),
                "--token-auth-file",
                str(w / "tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--service-account-issuer",
                f"https://{self.name}.kubernetes.default.svc",
                "--service-account-key-file",
                str(sa_key),
                "--service-account-signing-key-file",
                str(sa_key),
                "--audit-policy-file",
                str(w / "audit-policy.yaml"),
                "--audit-log-path",
                str(self.audit.path),
                "--audit-log-mode",
                "blocking",
                "--allow-privileged=true",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready(time.monotonic() + timeout)
        self.kubeconfig.write_text(self.kubeconfig_text(ADMIN_TOKEN))
        return self

    def kubeconfig_text(self, token: str, *, user: str = "admin") -> str:
        return (
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: {self.name}, cluster: {{server: '{self.url}', "
            f"certificate-authority: '{self.ca_file}'}}}}]\n"
            f"users: [{{name: {user}, user: {{token: '{token}'}}}}]\n"
            f"contexts: [{{name: {self.name}, context: {{cluster: {self.name}, user: {user}}}}}]\n"
            f"current-context: {self.name}\n"
        )

    def _wait_ready(self, deadline: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kube-apiserver exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "apiserver.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the API server's admin."""
        proc = subprocess.run(
            [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)

    def token(self, service_account: str, namespace: str = "default", duration: str = "24h") -> str:
        """A TokenRequest token for a ServiceAccount."""
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()

    def stop(self) -> None:
        _stop(self.proc)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def api_server(workdir: Path) -> Iterator[Path]:
    """One etcd and one API server; yields the admin kubeconfig path."""
    with Etcd(workdir / "etcd") as etcd, ApiServer(workdir / "apiserver", etcd) as api:
        yield api.kubeconfig


def bind_role_groups(api: ApiServer, roles: dict[str, str] | None = None) -> None:
    """Apply `role_bindings(roles)`."""
    api.apply(role_bindings(roles))


def role_bindings(roles: dict[str, str] | None = None) -> str:
    """ClusterRoleBindings `vgate-<role>`: group `vgate:<role>` → ClusterRole. There is no
    controller-manager here, so the aggregated `admin`/`edit`/`view` roles are empty:
    `view` and `admin` are bound to ClusterRoles of this module's own."""
    roles = roles or {
        "cluster-admin": "cluster-admin",
        "admin": "vgate-test-admin",
        "view": "vgate-test-view",
    }
    docs = [
        """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: vgate-test-view}
rules:
- apiGroups: ["", "apps", "batch"]
  resources: ["*"]
  verbs: ["get", "list", "watch"]
""",
        """apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: vgate-test-admin}
rules:
- apiGroups: ["", "apps", "batch"]
  resources: ["*"]
  verbs: ["*"]
""",
    ]
    for role, cluster_role in roles.items():
        docs.append(f"""apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: vgate-{role}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {cluster_role}}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "vgate:{role}"}}]
""")
    return "---\n".join(docs)


GATEWAY_EXTRAS: tuple[str, ...] = ()  # the gateway impersonates no extras (README)


def impersonator_token(
    api: ApiServer,
    name: str = "vgate",
    namespace: str = "default",
    *,
    extras: tuple[str, ...] = GATEWAY_EXTRAS,
    may_review: bool = False,
) -> str:
    """Apply `impersonator(...)` and return a TokenRequest token for its ServiceAccount."""
    api.apply(impersonator(name, namespace, extras=extras, may_review=may_review))
    return api.token(name, namespace)


def impersonator(
    name: str = "vgate",
    namespace: str = "default",
    *,
    extras: tuple[str, ...] = GATEWAY_EXTRAS,
    may_review: bool = False,
) -> str:
    """A ServiceAccount that may only impersonate (what the gateway needs upstream: users,
    groups, uids and the `extras` keys, each named: RBAC's `userextras` alone does not cover
    `userextras/<key>`). `may_review` also lets it create SubjectAccessReviews (what nested
    impersonation, `kubectl --as`, needs)."""
    review = (
        """
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]"""
        if may_review
        else ""
    )
    return f"""apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {name}-impersonator}}
rules:
- apiGroups: [""]
  resources: ["users", "groups"]
  verbs: ["impersonate"]
- apiGroups: ["authentication.k8s.io"]
  resources: {json.dumps(["uids", *(f"userextras/{key}" for key in extras)])}
  verbs: ["impersonate"]{review}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {name}-impersonator}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {name}-impersonator}}
subjects: [{{kind: ServiceAccount, name: {name}, namespace: {namespace}}}]
"""


def start_all(servers: list[ApiServer], timeout: float = 90.0) -> None:
    """Start API servers side by side (each takes seconds, mostly waiting)."""
    failures: list[BaseException] = []

    def run(server: ApiServer) -> None:
        try:
            server.start(timeout)
        except BaseException as exc:  # re-raised below, in the caller's thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        for server in servers:
            server.stop()
        raise failures[0]


_LOGGED_REQUEST = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD) (https?://\S+)")
_LOGGED_AUDIT_ID = re.compile(r"\bAudit-Id: ([0-9A-Za-z-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class LoggedCall:
    """One HTTP request of a `kubectl -v=8` run: method, URL and the answer's Audit-Id."""

    method: str
    url: str
    audit_id: str


def logged_calls(kubectl_stderr: str) -> list[LoggedCall]:
    """The requests a `kubectl -v=8` run logged, each with the Audit-Id it was answered with
    (kube-apiserver's audit ID; through vgate, the gateway's request id)."""
    calls: list[LoggedCall] = []
    method = url = ""
    for line in kubectl_stderr.splitlines():
        request = _LOGGED_REQUEST.search(line)
        if request:
            method, url = request.groups()
            continue
        found = _LOGGED_AUDIT_ID.search(line)
        if found and url:
            calls.append(LoggedCall(method, url, found.group(1)))
            method = url = ""
    return calls


def audit_id_of(kubectl_stderr: str, path_part: str) -> str:
    """The Audit-Id of the last logged request whose URL contains `path_part`."""
    ids = [c.audit_id for c in logged_calls(kubectl_stderr) if path_part in c.url]
    if not ids:
        raise AssertionError(
            f"kubectl logged no answered request to {path_part!r}:\n" + kubectl_stderr[-3000:]
        )
    return ids[-1]
