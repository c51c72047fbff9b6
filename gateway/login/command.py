"""`vgate login`, `vgate logout` and `vgate kubeconfig`: arguments in, exit code out."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.kubeconfig_files import kubeconfig_paths, named_entries
from gateway.login.cache import CachedTokens, CacheKey, TokenCache
from gateway.login.errors import IdPUnreachable, LoginError
from gateway.login.exec_credential import exec_credential, requested_api_version
from gateway.login.kubeconfig import KubeconfigSpec, kubeconfig_yaml

if TYPE_CHECKING:
    from gateway.login.provider import Tokens

DEFAULT_SCOPES = "openid email profile groups offline_access"
DEFAULT_PORTS = (8000, 18000)
EXPIRY_MARGIN_SECONDS = 30.0


def add_login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--issuer", required=True, help="the OpenID Provider's issuer URL")
    p.add_argument("--client-id", required=True, help="the public OIDC client of vgate login")
    p.add_argument("--user", default="", help="login hint; also keeps this user's tokens apart")
    p.add_argument("--grant", choices=["auth-code", "device-code"], default="auth-code",
                   help="browser login on a loopback redirect, or the device flow (headless)")
    p.add_argument("--scopes", default=DEFAULT_SCOPES)
    p.add_argument("--listen-port", type=int, action="append", default=None,
                   help=f"loopback ports to try in order (default {DEFAULT_PORTS}; "
                        "env VGATE_LOGIN_PORTS=comma list)")
    p.add_argument("--browser", choices=["auto", "none"], default="auto",
                   help="open a browser (auto) or only print the URL (none)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a login")
    p.add_argument("--issuer-ca-file", help="CA bundle for the IdP's TLS certificate")
    p.add_argument("--issuer-ca-data", help="the same, base64 PEM (as kubeconfigs carry it)")
    p.add_argument("--cache-dir", type=Path, help="token cache folder "
                   "(default $VGATE_CACHE_DIR or ~/.cache/vgate/tokens)")


def _ports(args: argparse.Namespace) -> list[int]:
    if args.listen_port:
        return list(args.listen_port)
    env = os.environ.get("VGATE_LOGIN_PORTS", "").strip()
    if env:
        try:
            return [int(p) for p in env.split(",") if p.strip()]
        except ValueError:
            raise LoginError(f"VGATE_LOGIN_PORTS={env!r} is not a comma list of ports") from None
    return list(DEFAULT_PORTS)


def _entry(key: CacheKey, tokens: Tokens, previous: CachedTokens | None) -> CachedTokens:
    refresh = tokens.refresh_token or (previous.refresh_token if previous else None)
    return CachedTokens(key.issuer, key.client_id, key.user, tokens.id_token, refresh,
                        tokens.expires_at)


def obtain_token(args: argparse.Namespace, cache: TokenCache) -> CachedTokens:
    """A valid ID token: cached (no IdP contact), refreshed, or from a new login.

    The entry's lock is held throughout, so concurrent callers do one login between them.
    """
    key = CacheKey(args.issuer, args.client_id, args.user)
    with cache.locked(key):
        entry = cache.load(key)
        if entry is not None and entry.valid_for(time.time(), EXPIRY_MARGIN_SECONDS):
            return entry
        # only now: the OAuth client code costs ~0.1 s to import, the cached path nothing
        from gateway.login.flows import browser_login, device_login
        from gateway.login.provider import Provider, tls_verify

        provider = Provider(
            args.issuer, args.client_id,
            verify=tls_verify(args.issuer_ca_file, args.issuer_ca_data),
        )
        tokens: Tokens | None = None
        if entry is not None and entry.refresh_token:
            try:
                tokens = provider.refresh(entry.refresh_token)
            except IdPUnreachable:
                raise
            except LoginError as exc:
                print(f"vgate: the refresh token no longer works ({exc}); signing in again",
                      file=sys.stderr, flush=True)
        if tokens is None:
            if args.grant == "device-code":
                tokens = device_login(provider, scope=args.scopes)
            else:
                tokens = browser_login(
                    provider, scope=args.scopes, ports=_ports(args),
                    open_browser=args.browser == "auto", timeout=args.timeout,
                    login_hint=args.user,
                )
        new = _entry(key, tokens, entry)
        cache.store(new)
        return new


def login_main(args: argparse.Namespace) -> int:
    """kubectl's exec plugin: stdout carries the ExecCredential and nothing else, ever."""
    stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever else writes to fd 1 (a browser launcher, a library) goes to stderr
    sys.stdout = sys.stderr
    try:
        api_version = requested_api_version()
        entry = obtain_token(args, TokenCache(args.cache_dir))
    except (LoginError, ValueError, OSError) as exc:
        print(f"vgate login: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("vgate login: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # never a traceback instead of a clear line
        print(f"vgate login: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr,
              flush=True)
        return 1
    stdout.write(exec_credential(entry.id_token, entry.expires_at, api_version) + "\n")
    stdout.flush()
    return 0


def logout_main(args: argparse.Namespace) -> int:
    """Forget cached tokens (and revoke their refresh tokens at the IdP, best effort)."""
    cache = TokenCache(args.cache_dir)
    if args.tenant:
        found = _plugin_args_for_tenant(args.tenant)
        if found is None:
            print(f"vgate logout: no kubeconfig user vgate-{args.tenant} runs `vgate login` "
                  "(looked in $KUBECONFIG or ~/.kube/config)", file=sys.stderr)
            return 1
        args.issuer, args.client_id, args.user = found
    if not args.all and not args.issuer:
        print("vgate logout: give --tenant, --issuer (optionally --client-id/--user) or --all",
              file=sys.stderr)
        return 2
    removed = 0
    for entry in cache.entries():
        if not args.all and (
            entry.issuer != args.issuer
            or (args.client_id and entry.client_id != args.client_id)
            or (args.user is not None and entry.user != args.user)
        ):
            continue
        key = CacheKey(entry.issuer, entry.client_id, entry.user)
        with cache.locked(key):
            cache.remove(key)
        removed += 1
        if entry.refresh_token and not args.keep_session:
            from gateway.login.provider import Provider, tls_verify

            provider = Provider(entry.issuer, entry.client_id, timeout=5.0,
                                verify=tls_verify(args.issuer_ca_file, None))
            provider.revoke(entry.refresh_token)
        who = f" ({entry.user})" if entry.user else ""
        print(f"vgate: logged out of {entry.issuer} as client {entry.client_id}{who}",
              file=sys.stderr)
    if removed == 0:
        print("vgate: no cached tokens matched", file=sys.stderr)
    return 0


def _plugin_args_for_tenant(tenant: str) -> tuple[str, str, str] | None:
    """(issuer, client id, user) of the kubeconfig user `vgate-<tenant>`, from the files
    kubectl would read (unreadable files and malformed entries are passed over)."""
    import yaml

    for path in kubeconfig_paths():
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for name, user in named_entries(doc, "users"):
            exec_ = user.get("exec")
            if name != f"vgate-{tenant}" or not isinstance(exec_, dict) \
                    or not isinstance(exec_.get("args"), list):
                continue
            args = [str(a) for a in exec_["args"]]
            if "login" not in args:
                continue
            values = {k: v for k, _, v in (a.partition("=") for a in args) if v}
            if "--issuer" in values:
                return (values["--issuer"], values.get("--client-id", "vgate"),
                        values.get("--user", ""))
    return None


def kubeconfig_main(args: argparse.Namespace) -> int:
    """Print a tenant's kubeconfig (the same one the portal offers)."""
    try:
        ca = Path(args.certificate_authority).read_bytes() if args.certificate_authority else None
        issuer_ca = Path(args.issuer_ca_file).read_bytes() if args.issuer_ca_file else None
    except OSError as exc:
        print(f"vgate kubeconfig: {exc}", file=sys.stderr)
        return 1
    server = args.server.rstrip("/")
    if not server.startswith(("https://", "http://")):
        print("vgate kubeconfig: --server must be an https:// URL", file=sys.stderr)
        return 2
    spec = KubeconfigSpec(
        tenant=args.tenant, server=server, issuer=args.issuer, client_id=args.client_id,
        ca_pem=ca, command=args.plugin_command, issuer_ca_pem=issuer_ca,
    )
    sys.stdout.write(kubeconfig_yaml(spec))
    return 0


def add_logout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="forget the tokens the kubeconfig user vgate-<tenant> uses")
    p.add_argument("--issuer", help="forget the tokens of this issuer")
    p.add_argument("--client-id", help="only this client")
    p.add_argument("--user", default=None, help="only this user selection")
    p.add_argument("--all", action="store_true", help="forget every cached token")
    p.add_argument("--keep-session", action="store_true",
                   help="do not revoke the refresh tokens at the IdP")
    p.add_argument("--issuer-ca-file", help="CA bundle for the IdP's TLS certificate")
    p.add_argument("--cache-dir", type=Path)


def add_kubeconfig_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True,
                   help="the tenant's URL: https://<tenant>.<base-domain> or …/clusters/<tenant>")
    p.add_argument("--tenant", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--client-id", default="vgate")
    p.add_argument("--certificate-authority", help="the gateway's CA (PEM), embedded as data")
    p.add_argument("--issuer-ca-file", help="the IdP's CA (PEM), passed to vgate login")
    p.add_argument("--command", dest="plugin_command", default="vgate",
                   help="the plugin command kubectl runs")


