"""`vgate quickstart`: write a complete local setup into one folder and run it.

The folder holds the gateway's config, a private CA and serving certificate, a policy
(`alice` is cluster-admin and `bob` may view, in every tenant), the local OpenID
Provider's config and keys, and the first tenant's credential files. Running it again
reuses the folder, so cached logins and the CA stay valid.

It stops everything it started when it ends (Ctrl-C, SIGTERM): the OpenID Provider and the
local provisioner's kube-apiservers and etcd. `vgate quickstart --stop` stops a quickstart
running from the folder, or what a killed one left running (`processes`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.kubeconfig_files import kubeconfig_paths
from gateway.lifecycle.assemble import DEFAULT_ASSETS
from gateway.login.kubeconfig import KubeconfigSpec, kubeconfig_yaml
from gateway.quickstart.dev_idp import DevIdP
from gateway.quickstart.first_tenant import QuickstartError, tenant_from_kubeconfig
from gateway.quickstart.pki import serving_certificate
from gateway.quickstart.processes import IDP_PID, QUICKSTART_PID, record, running, stop_all

DEFAULT_DIR = Path("~/.vgate/quickstart")

USERS = {
    "alice": {
        "email": "alice@example.com",
        "name": "Alice Admin",
        "groups": ["platform-admins"],
        "password": "alice",
    },
    "bob": {
        "email": "bob@example.com",
        "name": "Bob Viewer",
        "groups": ["developers"],
        "password": "bob",
    },
}
POLICY = {
    "tenant": "*",
    "roles": {
        "cluster-admin": {"groups": ["oidc:platform-admins"]},
        "view": {"groups": ["oidc:developers"]},
    },
}
ROLE_BINDINGS = {
    "vgate:cluster-admin": "cluster-admin",
    "vgate:admin": "admin",
    "vgate:view": "view",
}


@dataclass(frozen=True)
class Options:
    directory: Path
    kubeconfig: Path | None = None
    context: str | None = None
    upstream_token_file: Path | None = None
    tenant: str = "local"
    envtest: bool = False  # first tenant from $KUBEBUILDER_ASSETS, not a kubeconfig
    host: str = "127.0.0.1"
    port: int = 8443
    idp_port: int = 8444


@dataclass(frozen=True)
class Prepared:
    directory: Path
    config_file: Path
    gateway_url: str
    ca_file: Path
    tenant_name: str
    tenant_source: str
    static_tenant: dict | None  # None: a lifecycle tenant
    idp: DevIdP
    kubeconfig: Path


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _secret(path: Path) -> str:
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def prepare(opts: Options) -> Prepared:
    """Write every file of the setup (idempotent); nothing is started yet."""
    d = opts.directory.expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for port, what in ((opts.port, "--port"), (opts.idp_port, "--idp-port")):
        if not _port_free(opts.host, port):
            raise QuickstartError(f"{opts.host}:{port} is in use; choose another with {what}")
    tenant, source = _first_tenant(opts, d)
    if tenant is not None and opts.upstream_token_file:
        for key in ("token_file", "client_cert_file", "client_key_file"):
            tenant.pop(key, None)
        tenant["token_file"] = str(opts.upstream_token_file.resolve())
    serving = serving_certificate(d / "pki", [opts.host, "localhost", "*.localhost"])
    issuer = f"http://127.0.0.1:{opts.idp_port}"
    gateway_url = f"https://{opts.host}:{opts.port}"
    idp_config: dict[str, Any] = {
        "issuer": issuer,
        "host": "127.0.0.1",
        "port": opts.idp_port,
        "keys": str(d / "idp-keys.json"),
        "store": str(d / "idp-store.json"),
        "ttl": {"IdToken": 900, "AccessToken": 900, "RefreshToken": 86400, "DeviceCode": 600},
        "users": USERS,
        "clients": [
            {
                "client_id": "vgate",
                "application_type": "native",
                "token_endpoint_auth_method": "none",
                "grant_types": [
                    "authorization_code",
                    "refresh_token",
                    "urn:ietf:params:oauth:grant-type:device_code",
                ],
                "response_types": ["code"],
                "redirect_uris": ["http://127.0.0.1/callback", "http://localhost/callback"],
            },
        ],
    }
    portal_secret = _secret(d / "portal-client-secret")
    _secret(d / "portal-cookie-secret")
    idp_config["clients"].append(
        {
            "client_id": "vgate-portal",
            "client_secret": portal_secret,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "redirect_uris": [f"{gateway_url}/oauth2/callback"],
        }
    )
    idp = DevIdP(idp_config, d / "idp-config.json", d / "idp.log", d / IDP_PID)
    (d / "policies").mkdir(exist_ok=True)
    (d / "policies" / "quickstart.yaml").write_text(yaml.safe_dump(POLICY, sort_keys=False))
    config = {
        "listen": {"host": opts.host, "port": opts.port},
        "tls": {"cert_file": str(serving.cert_file), "key_file": str(serving.key_file)},
        "routing": {"base_domain": "localhost", "path_prefix": "/clusters"},
        "oidc": {
            "issuers": [
                {
                    "issuer": issuer,
                    "audiences": ["vgate"],
                    "username_claim": "email",
                    "username_prefix": "oidc:",
                    "groups_claim": "groups",
                    "groups_prefix": "oidc:",
                }
            ]
        },
        "policies": str(d / "policies"),
        "audit": {"file": str(d / "audit.log")},
        "tenants": [tenant] if tenant is not None else [],
        "lifecycle": {
            "store": str(d / "tenants.db"),
            "credentials_dir": str(d / "credentials"),
            "provisioner": "local",
            "local": {"work_dir": str(d / "local")},
            "public_url": gateway_url,
            "platform_admin_groups": ["oidc:platform-admins"],
            "auto_wake": True,
        },
        "portal": {
            "issuer": issuer,
            "client_secret_file": str(d / "portal-client-secret"),
            "cookie_secret_file": str(d / "portal-cookie-secret"),
            "public_url": gateway_url,
            "ca_file": str(serving.ca_file),
            "login_command": _login_command(),
            "preferred_form": "path",  # <tenant>.localhost does not resolve everywhere
        },
    }
    config_file = d / "vgate.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    kubeconfig = d / "kubeconfig"
    kubeconfig.write_text(
        kubeconfig_yaml(
            KubeconfigSpec(
                tenant=opts.tenant,
                server=f"{gateway_url}/clusters/{opts.tenant}",
                issuer=issuer,
                client_id="vgate",
                ca_pem=serving.ca_file.read_bytes(),
                command=_login_command(),
            )
        )
    )
    if tenant is None:
        _register_local_tenant(config_file, opts.tenant)
    return Prepared(
        d, config_file, gateway_url, serving.ca_file, opts.tenant, source, tenant, idp, kubeconfig
    )


def _first_tenant(opts: Options, d: Path) -> tuple[dict | None, str]:
    """The kubeconfig context's cluster as a static tenant; or None when the first tenant is
    a local kube-apiserver (envtest binaries) that the lifecycle manager will start."""
    assets = Path(os.environ.get("KUBEBUILDER_ASSETS") or DEFAULT_ASSETS)
    has_envtest = all((assets / b).is_file() for b in ("kube-apiserver", "etcd"))
    local = f"a local kube-apiserver from {assets}, started by the lifecycle manager"
    if opts.envtest:
        if not has_envtest:
            raise QuickstartError(
                f"--envtest: kube-apiserver and etcd are not in {assets} "
                "(set $KUBEBUILDER_ASSETS, e.g. from setup-envtest)"
            )
        return None, local
    try:
        return tenant_from_kubeconfig(
            kubeconfig_paths(opts.kubeconfig),
            opts.context,
            d / "tenants" / opts.tenant,
            name=opts.tenant,
        )
    except QuickstartError as exc:
        if has_envtest and opts.kubeconfig is None and opts.context is None:
            return None, local
        raise QuickstartError(
            f"{exc}\n(or put the envtest binaries kube-apiserver and etcd "
            f"in {assets} / $KUBEBUILDER_ASSETS and run with --envtest)"
        ) from None


def _register_local_tenant(config_file: Path, name: str) -> None:
    """Ask the lifecycle manager for the first tenant (kept if it exists already), at the
    Kubernetes version of the local kube-apiserver."""
    from pydantic import ValidationError

    from gateway.config import load_config
    from gateway.lifecycle.assemble import open_store, tenant_operations
    from gateway.lifecycle.model import TenantSpec, field_problems
    from gateway.lifecycle.stores.protocol import TenantExists

    config = load_config(config_file)

    async def create() -> None:
        store = open_store(config)
        try:
            await tenant_operations(config, store).create(
                TenantSpec(
                    name=name,
                    admin_groups=["oidc:platform-admins"],
                    view_groups=["oidc:developers"],
                )
            )
        except TenantExists:
            pass
        except ValidationError as exc:  # no kube-apiserver that runs here
            raise QuickstartError("; ".join(m for _, m in field_problems(exc))) from None
        finally:
            await store.close()

    asyncio.run(create())


def _login_command() -> str:
    """The exec plugin command for kubeconfigs: this installation's `vgate` if on PATH."""
    return shutil.which("vgate") or "vgate"


def bind_roles(tenant: dict) -> list[str]:
    """Create the ClusterRoleBindings of the role groups in the tenant's cluster (server-side
    apply with the tenant credential); returns what was applied."""
    import httpx

    from gateway.config.model import Tenant
    from gateway.registry import upstream_from_config

    up = upstream_from_config(Tenant.model_validate(tenant))  # the gateway's own TLS setup
    headers = {"Content-Type": "application/apply-patch+yaml"}
    if up.authorization is not None:
        headers["Authorization"] = up.authorization().decode()
    sni = {"sni_hostname": up.server_hostname} if up.server_hostname else {}
    applied = []
    with httpx.Client(base_url=tenant["upstream"], verify=up.ssl or True, timeout=10) as c:
        for group, role in ROLE_BINDINGS.items():
            name = group.replace(":", "-")
            body = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "vgate"}},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}
                ],
            }
            r = c.patch(
                f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}",
                params={"fieldManager": "vgate-quickstart", "force": "true"},
                headers=headers,
                content=json.dumps(body),
                extensions=sni,
            )
            if r.status_code >= 300:
                raise QuickstartError(
                    f"could not create ClusterRoleBinding {name}: HTTP {r.status_code} "
                    f"{r.text[:300]}"
                )
            applied.append(f"{name}: group {group} → ClusterRole {role}")
    return applied


def stop_command(directory: Path) -> str:
    """The command that stops the quickstart of `directory`."""
    default = directory == DEFAULT_DIR.expanduser().resolve()
    return "vgate quickstart --stop" + ("" if default else f" --dir {directory}")


def banner(p: Prepared) -> str:
    t = p.tenant_name
    port = p.gateway_url.rsplit(":", 1)[1]
    host_form = f"{t}.localhost"
    lines = [
        "vgate quickstart",
        f"  gateway   {p.gateway_url}   (CA {p.ca_file})",
        f"  tenant    {t} → {p.tenant_source}",
        f"            {p.gateway_url}/clusters/{t}",
        f"            or https://{host_form}:{port} once {host_form} resolves to 127.0.0.1",
        f'            (a line "127.0.0.1 {host_form}" in /etc/hosts, or wildcard DNS for '
        "*.localhost)",
        f"  IdP       {p.idp.issuer}   log in as alice/alice (cluster-admin) or bob/bob (view)",
        f"  portal    {p.gateway_url}/   (sign in, download a kubeconfig)",
        "            the browser warns: the CA is private. Trust it (the portal's \"Did your "
        'browser warn" says how) or proceed',
        f"  config    {p.config_file}",
        f"  try       KUBECONFIG={p.kubeconfig} kubectl auth whoami",
        "  stop      Ctrl-C stops the gateway, the IdP and every tenant's kube-apiserver and etcd;",
        f"            if it was killed: {stop_command(p.directory)}",
    ]
    return "\n".join(lines)


def stop(directory: Path) -> int:
    """`vgate quickstart --stop`: stop the quickstart running from `directory` and whatever
    a killed one left running."""
    d = directory.expanduser().resolve()
    stopped = stop_all(d) if d.is_dir() else []
    if not stopped:
        print(f"vgate quickstart: nothing of the quickstart in {d} is running", file=sys.stderr)
    for started in stopped:
        print(f"stopped {started}", file=sys.stderr)
    return 0


def _take_over(d: Path) -> None:
    """Refuse when a quickstart runs from `d`; stop what a killed one left running."""
    found = running(d)
    main = next((s for s in found if s.pid_file.name == QUICKSTART_PID), None)
    if main is not None:
        raise QuickstartError(
            f"a quickstart is running from {d} already (pid {main.pid}); "
            f"use it, or stop it with: {stop_command(d)}"
        )
    if found:
        left = ", ".join(str(s) for s in stop_all(d))
        print(
            f"note: stopped what an earlier quickstart in {d} left running: {left}", file=sys.stderr
        )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _hold_signals() -> None:
    """While stopping: a second Ctrl-C must not leave an API server or etcd behind."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def _stops_everything(d: Path) -> Iterator[None]:
    """Record this process as the quickstart of `d`; when it ends, however (SIGTERM acts
    like Ctrl-C until the gateway handles both), stop every process it started."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    record(d / QUICKSTART_PID, os.getpid())
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        _hold_signals()
        try:
            stopped = stop_all(d, skip=os.getpid())
            if stopped:
                print(
                    "vgate quickstart: stopped " + ", ".join(str(s) for s in stopped),
                    file=sys.stderr,
                )
            (d / QUICKSTART_PID).unlink(missing_ok=True)
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)


def run(opts: Options, *, with_bindings: bool) -> int:
    """Prepare, start the OpenID Provider, and serve until interrupted; then stop everything
    that was started."""
    from gateway.config import load_config
    from gateway.serve import serve

    d = opts.directory.expanduser().resolve()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    _take_over(d)
    status = 0
    with _stops_everything(d):
        prepared = prepare(opts)
        static_tenant = prepared.static_tenant
        if with_bindings and static_tenant is None:
            print(
                "note: --bind-roles is for a kubeconfig's cluster; the lifecycle manager "
                "binds the roles in its own tenants",
                file=sys.stderr,
            )
        elif with_bindings and static_tenant is not None:
            for line in bind_roles(static_tenant):
                print(f"applied ClusterRoleBinding {line}", file=sys.stderr)
        elif prepared.static_tenant is not None:
            print(
                "note: the role groups vgate:cluster-admin and vgate:view have no rights in "
                "the cluster until they are bound: run with --bind-roles once, or see the "
                "README",
                file=sys.stderr,
            )
        config = load_config(prepared.config_file)
        try:
            prepared.idp.start()
            print(banner(prepared), file=sys.stderr, flush=True)
            status = serve(config)
        finally:
            _hold_signals()
            prepared.idp.stop()
    return status
