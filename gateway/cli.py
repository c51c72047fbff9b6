"""The `vgate` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__

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
    from gateway.policy.model import WELL_KNOWN_ROLES

    _, problems = load_policies(config.policies, known_tenants=[t.name for t in config.tenants],
                                known_roles=WELL_KNOWN_ROLES)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in policies", file=sys.stderr)
        return 1
    print(f"{path}: ok ({len(config.tenants)} tenants, {len(config.oidc.issuers)} issuers)")
    return 0


def _serve(path: Path) -> int:
    from gateway.server.serve import serve

    config = _load(path)
    if config is None:
        return 1
    try:
        return serve(config)
    except ValueError as exc:  # policy problems
        print(exc, file=sys.stderr)
        return 1


def _policy_explain(path: Path, user: str, tenant: str, username: str | None) -> int:
    from gateway.directory.explain import explain
    from gateway.policy import PolicyEngine, load_policies

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
    return explain(config, PolicyEngine(policies), user, tenant, print, username=username)


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
    parser.add_argument("--version", action="version", version=f"vgate {__version__}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser("policy", help="inspect policy decisions")
    psub = p.add_subparsers(dest="policy_command", required=True)
    e = psub.add_parser("explain", help="what the gateway would do for a user on a tenant")
    e.add_argument("--config", type=Path, required=True)
    e.add_argument("--user", required=True,
                   help="the value the directory is searched with (e.g. the UPN)")
    e.add_argument("--tenant", required=True)
    e.add_argument("--username", help="the Kubernetes username (default: prefix + --user)")
    p = sub.add_parser("directory", help="the directory group cache")
    dsub = p.add_subparsers(dest="directory_command", required=True)
    f = dsub.add_parser("flush", help="drop cached groups in every worker")
    f.add_argument("--config", type=Path, required=True)
    f.add_argument("--user", help="only this user (default: everyone)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "policy":
        return _policy_explain(args.config, args.user, args.tenant, args.username)
    if args.command == "directory":
        return _directory_flush(args.config, args.user)
    return 2
