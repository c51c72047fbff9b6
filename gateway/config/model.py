"""Typed configuration for `vgate serve`; every field is documented in the README."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

TENANT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}
)


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are read relative to the config file's folder."""
    base = (info.context or {}).get("base_dir")
    return value if value.is_absolute() or base is None else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictPaths(Strict):
    """Defaults are validated too, so default relative paths also follow the config file."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Listen(Strict):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8443
    trusted_proxies: list[str] = []
    # /metrics (and the health endpoints) on a listener of their own, plain HTTP; None: no
    # metrics listener (the main port never serves /metrics: it lists every tenant)
    metrics_host: str = "127.0.0.1"
    metrics_port: Annotated[int | None, Field(ge=0, le=65535)] = None

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR range") from None
        return v


class TLS(Strict):
    cert_file: ConfigPath
    key_file: ConfigPath
    # how often to look for a renewed certificate (cert-manager, kubelet file swaps); 0: never
    reload_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0


class Routing(Strict):
    base_domain: str | None = None
    path_prefix: str | None = "/clusters"

    @field_validator("base_domain")
    @classmethod
    def _domain(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().lower().rstrip(".")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", v) or ".." in v:
            raise ValueError("must be a DNS name such as k8s.example.com")
        return v

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", v) or "/." in v:
            raise ValueError("must look like /clusters (no trailing slash, no dots segments)")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> Routing:
        if not self.base_domain and not self.path_prefix:
            raise ValueError("set base_domain, path_prefix, or both")
        return self


class Issuer(Strict):
    issuer: str
    audiences: Annotated[list[str], Field(min_length=1)]
    discovery_url: str | None = None
    ca_file: ConfigPath | None = None
    username_claim: str = "sub"
    username_prefix: str = ""
    groups_claim: str | None = "groups"
    groups_prefix: str = ""
    required_claims: dict[str, str] = {}
    algorithms: Annotated[list[str], Field(min_length=1)] = ["RS256", "ES256"]
    leeway_seconds: Annotated[int, Field(ge=0, le=300)] = 30
    max_token_age_seconds: Annotated[int | None, Field(gt=0)] = None
    # group overage (the token names its groups elsewhere: Entra ID `_claim_names`/`hasgroups`):
    # the directory's groups stand in for the claim, named by this attribute (+ groups_prefix)
    overage_group_names: Literal["name", "sid", "dn"] = "name"

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        if not re.match(r"^https://[^\s/?#]+", v) and not re.match(
            r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", v
        ):
            raise ValueError("must be an https:// URL (plain http only on loopback)")
        if "?" in v or "#" in v:
            raise ValueError("must not have a query or fragment")
        return v

    @field_validator("algorithms")
    @classmethod
    def _algs(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a not in ALLOWED_ALGORITHMS]
        if bad:
            raise ValueError(
                f"not allowed: {', '.join(bad)} (asymmetric algorithms only; never none or HS*)"
            )
        return v


class OIDC(Strict):
    issuers: Annotated[list[Issuer], Field(min_length=1)]
    token_cache_size: Annotated[int, Field(ge=0)] = 100_000
    max_token_bytes: Annotated[int, Field(ge=512, le=65536)] = 16384
    jwks_refresh_min_interval_seconds: Annotated[float, Field(ge=0)] = 10.0
    jwks_max_age_seconds: Annotated[float, Field(gt=0)] = 3600.0

    @model_validator(mode="after")
    def _unique(self) -> OIDC:
        seen = [i.issuer for i in self.issuers]
        dups = {i for i in seen if seen.count(i) > 1}
        if dups:
            raise ValueError(f"issuer listed twice: {', '.join(sorted(dups))}")
        return self


class Tenant(Strict):
    name: str
    upstream: str
    ca_file: ConfigPath | None = None
    token_file: ConfigPath | None = None
    client_cert_file: ConfigPath | None = None
    client_key_file: ConfigPath | None = None
    insecure_skip_tls_verify: bool = False
    server_name: str | None = None
    # tokens the tenant's own API server issued (ServiceAccount tokens) pass through, checked
    # by a TokenReview there (README "Tenant-native tokens")
    token_passthrough: bool = False
    service_account_issuer: str | None = None  # their `iss`; None: asked from the tenant

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TENANT_NAME.fullmatch(v):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-', max 63")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+/?", v):
            raise ValueError("must be scheme://host[:port] (http or https, no path)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _credential(self) -> Tenant:
        if self.token_file is None and self.client_cert_file is None:
            raise ValueError("needs token_file or client_cert_file/client_key_file")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self


class TokenReview(Strict):
    """How tenant-native tokens are checked (tenants with `token_passthrough`)."""

    cache_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0  # and never past `exp`
    negative_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    cache_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    issuer_cache_seconds: Annotated[float, Field(gt=0, le=86400)] = 3600.0


class Impersonation(Strict):
    """Hard caps on what one request impersonates upstream (431 above either)."""

    max_header_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 8192
    max_groups: Annotated[int, Field(ge=1, le=100_000)] = 256


class Limit(Strict):
    """One rate and concurrency limit; None: unlimited."""

    requests_per_second: Annotated[float | None, Field(gt=0)] = None
    burst: Annotated[int | None, Field(ge=1)] = None  # default: twice the rate (at least 1)
    concurrent_streams: Annotated[int | None, Field(ge=0)] = None  # watch, logs -f, exec, …

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> Limit:
        if self.burst is not None and self.requests_per_second is None:
            raise ValueError("burst needs requests_per_second")
        return self

    @property
    def bucket(self) -> int:
        """The bucket size (requests that may come at once after a quiet spell)."""
        if self.burst is not None:
            return self.burst
        return max(1, round(2 * (self.requests_per_second or 0)))

    @property
    def unlimited(self) -> bool:
        return self.requests_per_second is None and self.concurrent_streams is None


class TenantLimits(Strict):
    """Overrides for one tenant (each given limit replaces the default as a whole)."""

    tenant: Limit | None = None
    user: Limit | None = None
    roles: dict[str, Limit] = {}


class RateLimits(Strict):
    """Fair sharing (README "Rate and concurrency limits")."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    global_: Annotated[Limit, Field(alias="global")] = Limit()  # all tenants together
    tenant: Limit = Limit()  # each tenant
    user: Limit = Limit()  # each user within a tenant
    roles: dict[str, Limit] = {}  # per policy role: replaces `user` for users with that role
    tenants: dict[str, TenantLimits] = {}
    idle_seconds: Annotated[float, Field(ge=1, le=86400)] = 300.0  # a key unused this long is
    max_keys: Annotated[int, Field(ge=64, le=1 << 22)] = 65536  # forgotten; table slots

    @property
    def configured(self) -> bool:
        limits = [self.global_, self.tenant, self.user, *self.roles.values()]
        for t in self.tenants.values():
            limits += [x for x in (t.tenant, t.user, *t.roles.values()) if x is not None]
        return any(not limit.unlimited for limit in limits)


class Upstream(Strict):
    # TCP connect + TLS handshake to a tenant's API server; a timeout answers 504. 30 s as
    # client-go's dialer and kube-apiserver's proxy transport (net.Dialer{Timeout: 30s}): a
    # loaded API server can take longer than a few seconds to accept and finish a handshake
    connect_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    # time to every response head, watches, logs -f and upgrades included (their bodies
    # then stream as long as they last)
    response_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    # a tenant's response head (status line + headers) past either bound: connection cut, 502
    max_response_head_bytes: Annotated[int, Field(ge=4096, le=1 << 20)] = 65536
    max_response_headers: Annotated[int, Field(ge=16, le=10_000)] = 256
    max_idle_connections_per_tenant: Annotated[int, Field(ge=0)] = 256
    idle_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    # watches and `logs -f` to a TLS tenant run as streams of shared HTTP/2 connections
    # (ALPN h2; HTTP/1.1 when the tenant does not choose h2): one file descriptor per watch
    # in the gateway instead of two, and no TLS session per watch upstream
    http2_for_watches: bool = True
    # streams per HTTP/2 connection at most (the tenant's SETTINGS may say fewer)
    http2_max_streams_per_connection: Annotated[int, Field(ge=1, le=10_000)] = 1000
    # client-go's HTTP/2 health check: a PING after this long without a frame from the
    # tenant; no frame this long after it and the connection is dead (its watches break and
    # their clients reconnect instead of waiting forever on a half-open connection)
    http2_ping_after_seconds: Annotated[float, Field(gt=0)] = 30.0
    http2_ping_timeout_seconds: Annotated[float, Field(gt=0)] = 15.0


class Limits(Strict):
    max_request_head_bytes: Annotated[int, Field(ge=8192, le=1 << 20)] = 65536
    max_request_header_fields: Annotated[int, Field(ge=16, le=10_000)] = 256
    max_request_body_bytes: Annotated[int, Field(ge=1024)] = 32 << 20
    keepalive_timeout_seconds: Annotated[float, Field(gt=0)] = 120.0
    # a new connection must send its first byte within this; a head must be complete this
    # long after its first byte (kube-apiserver's own head deadline is 32 s)
    first_byte_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0
    request_head_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 32.0
    # open connections per client address that have not authenticated yet (per worker;
    # trusted proxies are exempt); 0: no cap
    max_unauthenticated_connections_per_ip: Annotated[int, Field(ge=0)] = 256
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 25.0


class Reload(Strict):
    """Policy files and static tenants change on a running gateway (README "Operations")."""

    # how often every process looks at the config and policy files (stat only); 0: SIGHUP only
    poll_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0


class NestedImpersonation(Strict):
    enabled: bool = False
    decision_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0


class Audit(Strict):
    file: str = "-"


def _yaml_off(value: object) -> object:
    """YAML 1.1 reads an unquoted `off` as false: that is the mode `off`."""
    return "off" if value is False else value


RecordingMode = Annotated[Literal["off", "best-effort", "required"], BeforeValidator(_yaml_off)]
StdinRecording = Literal["tty", "always", "never"]


class RecordingRule(Strict):
    """A tenant's or a role's recording setting (unset fields: as the level above)."""

    mode: RecordingMode | None = None
    stdin: StdinRecording | None = None


class SessionRecording(StrictPaths):
    """exec/attach session recording (README "Exec sessions: recording and protocol
    bridging"): asciinema v2 casts in `directory`, one per session."""

    mode: RecordingMode = "off"  # every tenant's default
    stdin: StdinRecording = "tty"  # tty: keystrokes only on a terminal (no piped secrets)
    directory: ConfigPath = Path("sessions")
    tenants: dict[str, RecordingRule] = {}  # replaces mode/stdin for that tenant
    roles: dict[str, RecordingRule] = {}  # a user with the role: only ever stricter
    max_session_bytes: Annotated[int, Field(ge=64 << 10)] = 64 << 20  # a cast past it: cut
    max_directory_bytes: Annotated[int, Field(ge=1 << 20)] = 10 << 30  # oldest casts go
    max_age_days: Annotated[float, Field(gt=0, le=36500)] = 90.0
    min_free_bytes: Annotated[int, Field(ge=0)] = 64 << 20  # less free: cannot record
    buffer_bytes: Annotated[int, Field(ge=64 << 10, le=256 << 20)] = 4 << 20  # per session
    flush_seconds: Annotated[float, Field(gt=0, le=10)] = 0.2

    @field_validator("tenants")
    @classmethod
    def _tenant_names(cls, v: dict[str, RecordingRule]) -> dict[str, RecordingRule]:
        bad = [name for name in v if not TENANT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"not a tenant name: {', '.join(repr(b) for b in bad)}")
        return v

    @property
    def enabled(self) -> bool:
        """Whether any session may be recorded at all."""
        rules = [*self.tenants.values(), *self.roles.values()]
        return self.mode != "off" or any(r.mode not in (None, "off") for r in rules)


class Sessions(Strict):
    """exec, attach, cp and port-forward sessions."""

    # a WebSocket client reaches a tenant that takes only SPDY (and the other way round)
    bridge: bool = True
    recording: SessionRecording = SessionRecording()


DEFAULT_INSTALL_HINT = (
    "vgate is not published on PyPI (a package of that name there is not ours). Install the "
    "`vgate` command from the wheel your platform team provides, built from the vgate source "
    "with `pip wheel --no-deps -w dist .`, with `pip install dist/vgate-*.whl`; in a checkout "
    "of the vgate source, `pip install -e .` does it."
)


class Portal(Strict):
    """The SSO web portal served on the gateway's own host at `/` (README: "Portal")."""

    issuer: str  # must be one of oidc.issuers
    client_id: str = "vgate-portal"  # confidential client of the portal
    client_secret_file: ConfigPath
    public_url: str  # what users open, e.g. https://k8s.example.com
    cookie_secret_file: ConfigPath  # signs the session cookie (>= 32 bytes)
    session_lifetime_seconds: Annotated[int, Field(ge=60, le=86400)] = 3600
    insecure_http: bool = False  # allow http:// public_url and non-Secure cookies
    cli_client_id: str = "vgate"  # public client `vgate login` uses (kubeconfigs)
    scopes: list[str] = ["openid", "email", "profile", "groups"]
    ca_file: ConfigPath | None = None  # CA of the gateway's certificate, for kubeconfigs
    login_command: str = "vgate"  # the exec plugin command put in kubeconfigs
    # the kubeconfig form offered first (button order, the paste-ready commands) when both
    # routings are configured: "path" when users' machines cannot resolve <tenant>.<base_domain>
    preferred_form: Literal["host", "path"] = "host"
    # how tenant developers get the `vgate` command (shown on the tenant page; `code` in
    # backticks is shown as code)
    install_hint: Annotated[str, Field(min_length=1, max_length=2000)] = DEFAULT_INSTALL_HINT
    # signed-out session ids (SQLite, shared by the workers of one host) and their bound
    session_store_file: Annotated[ConfigPath, Field(validate_default=True)] = Path(
        "portal-sessions.db"
    )
    max_signed_out_sessions: Annotated[int, Field(ge=10, le=1_000_000)] = 10_000

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#@]+/?", v):
            raise ValueError("must be scheme://host[:port] without a path")
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if "openid" not in v:
            raise ValueError("must include openid")
        return v

    @model_validator(mode="after")
    def _plain_http(self) -> Portal:
        if self.public_url.startswith("http://") and not self.insecure_http:
            raise ValueError("public_url is plain http: set insecure_http: true to allow it")
        return self


class LifecycleHelm(Strict):
    """The `helm` provisioner: one vcluster per tenant on the host cluster."""

    binary: str = "helm"
    kubeconfig: ConfigPath | None = None  # None: in-cluster service account, else $KUBECONFIG
    chart: str = "vcluster"
    repo: str | None = "https://charts.loft.sh"
    chart_version: str | None = "0.26.0"
    values_file: ConfigPath | None = None
    namespace_prefix: str = "vcluster-"
    pod_security: Literal["privileged", "baseline", "restricted"] = "baseline"
    gateway_namespace: str = "vgate"
    # the manager's own access in each tenant namespace (the Helm chart sets both): a
    # RoleBinding of this ClusterRole to this ServiceAccount (in gateway_namespace)
    manager_cluster_role: str | None = None
    manager_service_account: str | None = None
    ready_timeout_seconds: Annotated[float, Field(gt=0)] = 300.0

    @field_validator("namespace_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,20}-)?", v):
            raise ValueError("must be a short DNS-label prefix ending in '-', like vcluster-")
        return v

    @field_validator("gateway_namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        if not TENANT_NAME.fullmatch(v):
            raise ValueError("must be a namespace name (DNS label)")
        return v


class LifecycleLocal(StrictPaths):
    """The `local` provisioner: a kube-apiserver process per tenant, one shared etcd."""

    # default: $KUBEBUILDER_ASSETS, else /usr/local/kubebuilder/bin
    assets_dir: ConfigPath | None = None
    work_dir: ConfigPath = Path("lifecycle-local")


class Lifecycle(StrictPaths):
    """Tenants created and managed by `vgate tenant ...`; routes reach every worker."""

    # where tenant records live: "sqlite" (one file, one replica) or "kubernetes" (Tenant
    # objects and a Lease in the host cluster: several replicas)
    store_backend: Literal["sqlite", "kubernetes"] = "sqlite"
    store: ConfigPath = Path("tenants.db")  # the SQLite file
    # kubernetes store: the namespace of the Tenant objects (default: the pod's own), the
    # kubeconfig to reach the host (default: in-cluster, else $KUBECONFIG) and the Lease
    store_namespace: str | None = None
    store_kubeconfig: ConfigPath | None = None
    lease_name: str = "vgate-lifecycle"
    credentials_dir: ConfigPath = Path("credentials")
    provisioner: Literal["helm", "local"] = "helm"
    helm: LifecycleHelm = LifecycleHelm()
    local: LifecycleLocal = LifecycleLocal()
    manage: bool = True  # run the reconciler in this gateway (one process holds a lease)
    public_url: str | None = None  # the gateway's address as users see it (for kubectl URLs)
    platform_admin_groups: list[str] = []
    platform_admin_users: list[str] = []
    auto_wake: bool = False
    wake_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60.0
    idle_timeout_seconds: Annotated[float | None, Field(gt=0)] = None
    token_seconds: Annotated[int, Field(ge=600, le=86400)] = 3600
    poll_seconds: Annotated[float, Field(gt=0, le=10)] = 0.5

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/?#]+/?", v):
            raise ValueError("must be scheme://host[:port], like https://vgate.example.com")
        return v.rstrip("/") if v else v

    @field_validator("store_namespace", "lease_name")
    @classmethod
    def _object_name(cls, v: str | None) -> str | None:
        if v is not None and not TENANT_NAME.fullmatch(v):
            raise ValueError("must be a Kubernetes name (DNS label)")
        return v

    @model_validator(mode="after")
    def _backend(self) -> Lifecycle:
        if self.store_backend == "kubernetes" and self.provisioner == "local":
            raise ValueError(
                "the local provisioner keeps tenants on this machine: use "
                "store_backend sqlite with it (kubernetes is for helm)"
            )
        return self

    @model_validator(mode="after")
    def _admins(self) -> Lifecycle:
        for name in (*self.platform_admin_groups, *self.platform_admin_users):
            if not name or name.startswith("system:"):
                raise ValueError(f"platform admin {name!r}: empty or system: names are refused")
        return self


LOOPBACK_HOST = re.compile(r"^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])$")


class LDAP(Strict):
    """The Active Directory that decides group membership (see README "Active Directory")."""

    urls: Annotated[list[str], Field(min_length=1, max_length=16)]
    tls: Literal["ldaps", "starttls", "none"] = "ldaps"
    ca_file: ConfigPath | None = None
    bind_dn: str
    bind_password_file: ConfigPath
    user_base_dn: str
    user_attribute: Literal["userPrincipalName", "mail", "sAMAccountName"] = "userPrincipalName"
    user_claim: str = "email"
    group_base_dn: str
    nested: bool = True
    token_groups: bool = True
    cache_ttl_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    max_staleness_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 600.0
    negative_ttl_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    retry_interval_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 3.0
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    page_size: Annotated[int, Field(ge=10, le=1000)] = 500
    max_groups: Annotated[int, Field(ge=1, le=100_000)] = 5000
    cache_size: Annotated[int, Field(ge=1)] = 100_000
    # always: every request's groups come from the directory (it is the source of truth);
    # overage: only tokens whose groups claim overflowed (Entra ID group overage)
    lookup: Literal["always", "overage"] = "always"
    flush_file: Annotated[ConfigPath, Field(validate_default=True)] = Path("directory.flush")

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not re.fullmatch(r"ldaps?://[^\s/?#:]+(:\d{1,5})?/?", url) and not re.fullmatch(
                r"ldaps?://\[[0-9a-fA-F:]+\](:\d{1,5})?/?", url
            ):
                raise ValueError(f"{url!r} is not ldap://host[:port] or ldaps://host[:port]")
        return [u.rstrip("/") for u in v]

    @field_validator("bind_dn", "user_base_dn", "group_base_dn")
    @classmethod
    def _dn(cls, v: str) -> str:
        from gateway.names.dn import is_dn

        if not is_dn(v):
            raise ValueError(f"{v[:80]!r} is not a distinguished name")
        return v

    @model_validator(mode="after")
    def _transport(self) -> LDAP:
        schemes = {u.split("://", 1)[0] for u in self.urls}
        if self.tls == "ldaps" and schemes != {"ldaps"}:
            raise ValueError("tls: ldaps needs ldaps:// URLs")
        if self.tls in ("starttls", "none") and schemes != {"ldap"}:
            raise ValueError(f"tls: {self.tls} needs ldap:// URLs")
        if self.tls == "none":
            for url in self.urls:
                host = (
                    url.split("://", 1)[1].rsplit(":", 1)[0]
                    if "]" not in url
                    else url.split("://", 1)[1].split("]")[0] + "]"
                )
                if not LOOPBACK_HOST.fullmatch(host):
                    raise ValueError("tls: none is only allowed for a directory on loopback")
        if self.max_staleness_seconds and self.max_staleness_seconds < self.cache_ttl_seconds:
            raise ValueError("max_staleness_seconds must be 0 or at least cache_ttl_seconds")
        return self


class GatewayConfig(Strict):
    listen: Listen = Listen()
    tls: TLS | None = None
    workers: Annotated[int, Field(ge=0, le=256)] = 1
    routing: Routing = Routing()
    oidc: OIDC
    policies: Annotated[ConfigPath, Field(validate_default=True)] = Path("policies")
    tenants: list[Tenant] = []
    upstream: Upstream = Upstream()
    limits: Limits = Limits()
    reload: Reload = Reload()
    audit: Audit = Audit()
    sessions: Sessions = Sessions()
    nested_impersonation: NestedImpersonation = NestedImpersonation()
    token_review: TokenReview = TokenReview()
    impersonation: Impersonation = Impersonation()
    rate_limits: RateLimits = RateLimits()
    portal: Portal | None = None
    lifecycle: Lifecycle | None = None
    ldap: LDAP | None = None

    @model_validator(mode="after")
    def _portal_issuer(self) -> GatewayConfig:
        if self.portal and self.portal.issuer not in {i.issuer for i in self.oidc.issuers}:
            raise ValueError(f"portal.issuer {self.portal.issuer!r} is not one of oidc.issuers")
        return self
