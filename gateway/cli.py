"""The `vgate` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.build_info import describe

if TYPE_CHECKING:
    from gateway.config import GatewayConfig


def _load(path: Path) -> GatewayConfig | None:
    """Load the config, or print every problem (with its location) and return None."""
    from gateway.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {path}", file=sys.stderr)
        return None


def _check_config(path: Path) -> int:
    from gateway.policy import load_policies

    config = _load(path)
    if config is None:
        return 1
    # lifecycle tenants come and go at run time: policies may name tenants not created yet
    from gateway.policy.model import WELL_KNOWN_ROLES

    known = None if config.lifecycle else [t.name for t in config.tenants]
    _, policy_problems = load_policies(
        config.policies, known_tenants=known, known_roles=WELL_KNOWN_ROLES
    )
    problems = [str(p) for p in policy_problems]
    if config.lifecycle is not None:
        from gateway.lifecycle.assemble import lifecycle_problems

        problems.extend(lifecycle_problems(config))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in policies or the lifecycle section", file=sys.stderr)
        return 1
    if config.portal is not None:
        from gateway.portal.app import MIN_SECRET_BYTES, read_secret

        try:
            read_secret(config.portal.client_secret_file, "portal.client_secret_file")
            read_secret(
                config.portal.cookie_secret_file,
                "portal.cookie_secret_file",
                min_bytes=MIN_SECRET_BYTES,
            )
        except ValueError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
    print(f"{path}: ok ({len(config.tenants)} tenants, {len(config.oidc.issuers)} issuers)")
    return 0


def _serve(path: Path) -> int:
    from gateway.serve import serve

    config = _load(path)
    if config is None:
        return 1
    try:
        return serve(config, path)
    except ValueError as exc:  # policy problems
        print(exc, file=sys.stderr)
        return 1


def _quickstart(args: argparse.Namespace) -> int:
    from gateway.quickstart.first_tenant import QuickstartError
    from gateway.quickstart.run import Options, run, stop

    if args.stop:
        return stop(args.dir)
    options = Options(
        directory=args.dir,
        kubeconfig=args.kubeconfig,
        context=args.context,
        upstream_token_file=args.upstream_token_file,
        tenant=args.tenant,
        envtest=args.envtest,
        port=args.port,
        idp_port=args.idp_port,
    )
    try:
        return run(options, with_bindings=args.bind_roles)
    except QuickstartError as exc:
        print(f"vgate quickstart: {exc}", file=sys.stderr)
        return 1


def _policy_schema() -> int:
    import json

    from gateway.policy.model import policy_schema

    print(json.dumps(policy_schema(), indent=2))
    return 0


def _policy_explain(path: Path, user: str, tenant: str, username: str | None) -> int:
    from gateway.policy import PolicyEngine, load_policies
    from gateway.policy.explain import explain

    config = _load(path)
    if config is None:
        return 1
    policies, problems = load_policies(config.policies)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1
    if tenant not in {t.name for t in config.tenants}:
        print(f"note: tenant {tenant!r} is not in the config's tenants", file=sys.stderr)
    return explain(
        config, PolicyEngine(policies, config.impersonation), user, tenant, print, username=username
    )


def _directory_flush(path: Path, user: str | None) -> int:
    from gateway.directory.flush import request_flush

    config = _load(path)
    if config is None:
        return 1
    if config.ldap is None:
        print(f"{path}: no ldap section, nothing to flush", file=sys.stderr)
        return 1
    try:
        request_flush(config.ldap.flush_file, user)
    except OSError as exc:
        print(f"cannot write {config.ldap.flush_file}: {exc}", file=sys.stderr)
        return 1
    what = f"user {user!r}" if user else "every user"
    print(f"flush of {what} requested; every worker applies it within about a second")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgate", description=__doc__)
    parser.add_argument("--version", action="version", version=describe())
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser(
        "quickstart",
        help="run the gateway locally: a local OpenID Provider, the current kubeconfig's "
        "cluster as the first tenant",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("~/.vgate/quickstart"),
        help="where the setup lives (reused on the next run)",
    )
    p.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG or ~/.kube/config")
    p.add_argument("--context", help="default: the current context")
    p.add_argument(
        "--upstream-token-file",
        type=Path,
        help="a token for the gateway to use instead of the context's credential",
    )
    p.add_argument("--tenant", default="local", help="the first tenant's name")
    p.add_argument(
        "--envtest",
        action="store_true",
        help="the first tenant is a local kube-apiserver from $KUBEBUILDER_ASSETS "
        "(started by the lifecycle manager), not the kubeconfig's cluster",
    )
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--idp-port", type=int, default=8444)
    p.add_argument(
        "--bind-roles",
        action="store_true",
        help="create ClusterRoleBindings vgate:cluster-admin/admin/view in the "
        "tenant cluster (otherwise the roles only work once you bind them)",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="stop the quickstart running from --dir, or what a killed one left "
        "running (its IdP, kube-apiservers and etcd), and exit",
    )
    p = sub.add_parser("login", help="kubectl exec credential plugin: print an ID token")
    from gateway.login.command import (
        add_kubeconfig_arguments,
        add_login_arguments,
        add_logout_arguments,
    )

    add_login_arguments(p)
    p = sub.add_parser("logout", help="forget cached tokens of an issuer, or all")
    add_logout_arguments(p)
    p = sub.add_parser("kubeconfig", help="print a tenant's kubeconfig (exec plugin, no secret)")
    add_kubeconfig_arguments(p)
    from gateway.lifecycle import tenant_cli

    tenant_cli.add_parser(sub)
    p = sub.add_parser("policy", help="inspect policy decisions")
    psub = p.add_subparsers(dest="policy_command", required=True)
    e = psub.add_parser("explain", help="what the gateway would do for a user on a tenant")
    e.add_argument("--config", type=Path, required=True)
    e.add_argument(
        "--user", required=True, help="the value the directory is searched with (e.g. the UPN)"
    )
    e.add_argument("--tenant", required=True)
    e.add_argument("--username", help="the Kubernetes username (default: prefix + --user)")
    psub.add_parser("schema", help="print the JSON Schema of a policy file")
    from gateway.sessions import cli as sessions_cli

    sessions_cli.add_parser(sub)
    p = sub.add_parser("directory", help="the directory group cache")
    dsub = p.add_subparsers(dest="directory_command", required=True)
    f = dsub.add_parser("flush", help="drop cached groups in every worker")
    f.add_argument("--config", type=Path, required=True)
    f.add_argument("--user", help="only this user (default: everyone)")
    args = parser.parse_args(argv)
    if args.command in ("login", "logout", "kubeconfig"):
        from gateway.login import command

        return {
            "login": command.login_main,
            "logout": command.logout_main,
            "kubeconfig": command.kubeconfig_main,
        }[args.command](args)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for noisy in ("httpx", "httpx2"):  # one line per IdP/API call (lightkube 1.x uses httpx2)
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "quickstart":
        return _quickstart(args)
    if args.command == "tenant":
        return tenant_cli.run(args)
    if args.command == "policy" and args.policy_command == "schema":
        return _policy_schema()
    if args.command == "policy":
        return _policy_explain(args.config, args.user, args.tenant, args.username)
    if args.command == "directory":
        return _directory_flush(args.config, args.user)
    if args.command == "sessions":
        return sessions_cli.run(args, _load)
    return 2
