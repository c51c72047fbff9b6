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
    # lifecycle tenants come and go at run time: policies may name tenants not created yet
    known = None if config.lifecycle else [t.name for t in config.tenants]
    _, problems = load_policies(config.policies, known_tenants=known)
    if config.lifecycle is not None:
        from gateway.lifecycle.assemble import lifecycle_problems

        problems.extend(lifecycle_problems(config))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vgate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vgate {__version__}")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", type=Path, required=True)
    p = sub.add_parser("check-config", help="validate a config file and its policies")
    p.add_argument("--config", type=Path, required=True)
    from gateway.lifecycle import tenant_cli

    tenant_cli.add_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "tenant":
        return tenant_cli.run(args)
    return 2
