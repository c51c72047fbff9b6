"""`vgate login`, `vgate logout` and `vgate kubeconfig`: arguments in, exit code out."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.kubeconfig_files import kubeconfig_paths, named_entries
from gateway.login.cache import CachedTokens, CacheKey, TokenCache
from gateway.login.errors import IdPUnreachable, LoginError
from gateway.login.exec_credential import exec_credential, requested_api_version
from gateway.login.kubeconfig import KubeconfigSpec, kubeconfig_yaml
from gateway.login.trust import IssuerTrust

if TYPE_CHECKING:
    from gateway.login.lock import EntryLock
    from gateway.login.provider import Tokens

DEFAULT_SCOPES = "openid email profile groups offline_access"
DEFAULT_PORTS = (8000, 18000)
EXPIRY_MARGIN_SECONDS = 30.0
# A waiter outlasts the longest sign-in a holder may legitimately take: its browser login
# (--timeout) or a device flow (the IdP's device code lifetime: 10-15 min at common IdPs).
DEVICE_FLOW_SECONDS = 900.0
LOCK_MARGIN_SECONDS = 30.0


def add_login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--issuer", required=True, help="the OpenID Provider's issuer URL")
    p.add_argument("--client-id", required=True, help="the public OIDC client of vgate login")
    p.add_argument("--user", default="", help="login hint; also keeps this user's tokens apart")
    p.add_argument(
        "--grant",
        choices=["auth-code", "device-code"],
        default="auth-code",
        help="browser login on a loopback redirect, or the device flow (headless)",
    )
    p.add_argument("--scopes", default=DEFAULT_SCOPES)
    p.add_argument(
        "--listen-port",
        type=int,
        action="append",
        default=None,
        help=f"loopback ports to try in order (default {DEFAULT_PORTS}; "
        "env VGATE_LOGIN_PORTS=comma list)",
    )
    p.add_argument(
        "--browser",
        choices=["auto", "none"],
        default="auto",
        help="open a browser (auto) or only print the URL (none)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a login")
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="seconds to wait for another vgate login that is refreshing or "
        "signing in for the same user (default: the longer of --timeout "
        "and 900, plus 30)",
    )
    p.add_argument("--issuer-ca-file", help="CA bundle for the IdP's TLS certificate")
    p.add_argument("--issuer-ca-data", help="the same, base64 PEM (as kubeconfigs carry it)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="token cache folder (default $VGATE_CACHE_DIR or ~/.cache/vgate/tokens)",
    )


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


def _entry(
    key: CacheKey, tokens: Tokens, previous: CachedTokens | None, trust: IssuerTrust
) -> CachedTokens:
    refresh = tokens.refresh_token or (previous.refresh_token if previous else None)
    return CachedTokens(
        key.issuer,
        key.client_id,
        key.user,
        tokens.id_token,
        refresh,
        tokens.expires_at,
        trust.ca_file,
        trust.ca_data,
    )


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def obtain_token(args: argparse.Namespace, cache: TokenCache) -> CachedTokens:
    """A valid ID token: cached (no IdP contact), refreshed, or from a new sign-in.

    The entry's lock is held throughout, so concurrent callers do one refresh or one sign-in
    between them (the others wait, bounded by --lock-timeout, and take its token). When that
    sign-in fails, the processes that waited for it fail with its message.
    """
    key = CacheKey(args.issuer, args.client_id, args.user)
    wait = (
        args.lock_timeout
        if args.lock_timeout is not None
        else max(args.timeout, DEVICE_FLOW_SECONDS) + LOCK_MARGIN_SECONDS
    )
    with cache.locked(key, timeout=wait, notify=_say) as lock:
        entry = cache.load(key)
        if entry is not None and entry.valid_for(time.time(), EXPIRY_MARGIN_SECONDS):
            return entry
        failure = lock.failure_while_waiting()
        if failure is not None:
            raise LoginError(failure)
        try:
            new = _renew(args, key, entry, lock)
        except LoginError as exc:
            lock.failed(str(exc))
            raise
        cache.store(new)
        lock.succeeded()
        return new


def _renew(
    args: argparse.Namespace, key: CacheKey, entry: CachedTokens | None, lock: EntryLock
) -> CachedTokens:
    """Refresh with the entry's refresh token, else sign in (browser, device flow, URL)."""
    # only now: the OAuth client code costs ~0.1 s to import, the cached path nothing
    from gateway.login.flows import device_login, sign_in
    from gateway.login.provider import Provider

    trust = IssuerTrust.of(args.issuer_ca_file, args.issuer_ca_data)
    provider = Provider(args.issuer, args.client_id, verify=trust.verify())
    tokens: Tokens | None = None
    if entry is not None and entry.refresh_token:
        lock.doing(f"refreshing the token at {args.issuer}")
        try:
            tokens = provider.refresh(entry.refresh_token)
        except IdPUnreachable:
            raise
        except LoginError as exc:
            _say(f"vgate: the refresh token no longer works ({exc}); signing in again")
    if tokens is None:
        lock.doing(f"signing in at {args.issuer}")
        if args.grant == "device-code":
            tokens = device_login(provider, scope=args.scopes)
        else:
            tokens = sign_in(
                provider,
                scope=args.scopes,
                ports=_ports(args),
                open_browser_first=args.browser == "auto",
                timeout=args.timeout,
                login_hint=args.user,
            )
    return _entry(key, tokens, entry, trust)


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
        print(
            f"vgate login: unexpected error: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    stdout.write(exec_credential(entry.id_token, entry.expires_at, api_version) + "\n")
    stdout.flush()
    return 0


def logout_main(args: argparse.Namespace) -> int:
    """Forget cached tokens and revoke their refresh tokens at the IdP (RFC 7009).

    The cache is emptied in every case; the exit code is 1 when a refresh token could not
    be revoked (the IdP would still accept it), and the message names the IdP and why.
    """
    cache = TokenCache(args.cache_dir)
    given = IssuerTrust.of(args.issuer_ca_file, args.issuer_ca_data)
    if args.tenant:
        found = _plugin_args_for_tenant(args.tenant)
        if found is None:
            print(
                f"vgate logout: no kubeconfig user vgate-{args.tenant} runs `vgate login` "
                "(looked in $KUBECONFIG or ~/.kube/config)",
                file=sys.stderr,
            )
            return 1
        args.issuer, args.client_id, args.user = found.issuer, found.client_id, found.user
        given = given.or_else(found.trust)
    if not args.all and not args.issuer:
        print(
            "vgate logout: give --tenant, --issuer (optionally --client-id/--user) or --all",
            file=sys.stderr,
        )
        return 2
    removed = failed = 0
    for listed in cache.entries():
        if not args.all and (
            listed.issuer != args.issuer
            or (args.client_id and listed.client_id != args.client_id)
            or (args.user is not None and listed.user != args.user)
        ):
            continue
        key = CacheKey(listed.issuer, listed.client_id, listed.user)
        who = f"{listed.issuer} as client {listed.client_id}" + (
            f" ({listed.user})" if listed.user else ""
        )
        try:
            with cache.locked(key, timeout=args.lock_timeout, notify=_say):
                entry = cache.remove(key)  # re-read under the lock: a refresh may have rotated it
        except LoginError as exc:
            failed += 1
            print(f"vgate logout: could not log out of {who}: {exc}", file=sys.stderr)
            continue
        if entry is None:
            continue
        removed += 1
        if not entry.refresh_token:
            print(f"vgate: logged out of {who} (it had no refresh token)", file=sys.stderr)
            continue
        if args.keep_session:
            print(
                f"vgate: logged out of {who}; its refresh token stays valid at the IdP "
                "(--keep-session)",
                file=sys.stderr,
            )
            continue
        try:
            _revoke(entry, given)
        except LoginError as exc:
            failed += 1
            print(
                f"vgate logout: deleted the cached tokens of {who}, but could NOT revoke "
                f"its refresh token at the identity provider: {exc}. The IdP accepts that "
                "refresh token until it expires; end the session at the IdP (or run "
                "`vgate logout` again with the IdP reachable before deleting anything "
                "else) to be sure.",
                file=sys.stderr,
            )
            continue
        print(
            f"vgate: logged out of {who}; its refresh token is revoked at the IdP", file=sys.stderr
        )
    if removed == 0 and failed == 0:
        print("vgate: no cached tokens matched", file=sys.stderr)
    return 1 if failed else 0


def _revoke(entry: CachedTokens, given: IssuerTrust) -> None:
    """Revoke the entry's refresh token, trusting the IdP as given on the command line or
    else as the login that stored the entry did."""
    from gateway.login.provider import Provider

    assert entry.refresh_token is not None
    trust = given.or_else(IssuerTrust(entry.issuer_ca_file, entry.issuer_ca_data))
    Provider(entry.issuer, entry.client_id, timeout=10.0, verify=trust.verify()).revoke(
        entry.refresh_token
    )


@dataclass(frozen=True)
class PluginArgs:
    """What `vgate logout --tenant` needs from a kubeconfig's `vgate login` arguments."""

    issuer: str
    client_id: str
    user: str
    trust: IssuerTrust


def _plugin_args_for_tenant(tenant: str) -> PluginArgs | None:
    """The `vgate login` arguments of the kubeconfig user `vgate-<tenant>`, from the files
    kubectl would read (unreadable files and malformed entries are passed over)."""
    import yaml

    for path in kubeconfig_paths():
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for name, user in named_entries(doc, "users"):
            exec_ = user.get("exec")
            if (
                name != f"vgate-{tenant}"
                or not isinstance(exec_, dict)
                or not isinstance(exec_.get("args"), list)
            ):
                continue
            args = [str(a) for a in exec_["args"]]
            if "login" not in args:
                continue
            values = {k: v for k, _, v in (a.partition("=") for a in args) if v}
            if "--issuer" in values:
                return PluginArgs(
                    values["--issuer"],
                    values.get("--client-id", "vgate"),
                    values.get("--user", ""),
                    IssuerTrust(values.get("--issuer-ca-file"), values.get("--issuer-ca-data")),
                )
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
        tenant=args.tenant,
        server=server,
        issuer=args.issuer,
        client_id=args.client_id,
        ca_pem=ca,
        command=args.plugin_command,
        issuer_ca_pem=issuer_ca,
    )
    sys.stdout.write(kubeconfig_yaml(spec))
    return 0


def add_logout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tenant", help="forget the tokens the kubeconfig user vgate-<tenant> uses")
    p.add_argument("--issuer", help="forget the tokens of this issuer")
    p.add_argument("--client-id", help="only this client")
    p.add_argument("--user", default=None, help="only this user selection")
    p.add_argument("--all", action="store_true", help="forget every cached token")
    p.add_argument(
        "--keep-session", action="store_true", help="do not revoke the refresh tokens at the IdP"
    )
    p.add_argument(
        "--issuer-ca-file",
        help="CA bundle for the IdP's TLS certificate "
        "(default: what the login that cached the tokens used)",
    )
    p.add_argument("--issuer-ca-data", help="the same, base64 PEM")
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=15.0,
        help="seconds to wait for a vgate login busy with the same tokens",
    )
    p.add_argument("--cache-dir", type=Path)


def add_kubeconfig_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        required=True,
        help="the tenant's URL: https://<tenant>.<base-domain> or …/clusters/<tenant>",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--client-id", default="vgate")
    p.add_argument("--certificate-authority", help="the gateway's CA (PEM), embedded as data")
    p.add_argument("--issuer-ca-file", help="the IdP's CA (PEM), passed to vgate login")
    p.add_argument(
        "--command", dest="plugin_command", default="vgate", help="the plugin command kubectl runs"
    )
