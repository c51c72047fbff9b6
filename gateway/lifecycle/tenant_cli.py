"""`vgate tenant ...`: create, list, show, pause, resume, upgrade, delete.

Talks to the store named by `--config` (direct) or to a gateway's admin API (`--server`).
With `--wait` it follows the tenant step by step; in direct mode, when no gateway holds the
manager lease, it reconciles the tenant itself meanwhile. It stops waiting (exit 1, the error
printed) once a step has failed `SAME_ERROR_LIMIT` passes in a row with the same error: the
manager keeps retrying, but a person has to look.

Exit codes: 0 done, 1 failed, 2 invalid input, 3 already exists, 4 not found, 5 timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.lifecycle.model import parse_quota
from gateway.lifecycle.progress import Progress, human_age
from gateway.lifecycle.stores.protocol import StoreError, TenantExists, TenantNotFound
from gateway.lifecycle.tenant_client import Invalid, Tenant, TenantClient
from gateway.lifecycle.versions import minor_of

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_EXISTS, EXIT_NOT_FOUND, EXIT_TIMEOUT = range(6)
SAME_ERROR_LIMIT = 3


class Stuck(StoreError):
    """A step keeps failing with the same error; waiting longer will not help."""


class SameError:
    """Counts the reconciler's failed passes (`failures`) since an error was first seen."""

    def __init__(self, limit: int = SAME_ERROR_LIMIT) -> None:
        self.limit = limit
        self.error: str | None = None
        self.first: int = 0

    def stuck(self, tenant: Tenant) -> bool:
        error, failures = tenant.get("last_error"), int(tenant.get("failures") or 0)
        if error != self.error or failures < self.first:
            self.error, self.first = error, failures
        return error is not None and failures - self.first >= self.limit - 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("tenant", help="create and manage tenants' virtual clusters")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="gateway config (uses its store directly)")
    where.add_argument("--server", help="a running gateway's URL (uses its admin API)")
    p.add_argument(
        "--token",
        default=os.environ.get("VGATE_TOKEN"),
        help="bearer token for --server (default $VGATE_TOKEN)",
    )
    p.add_argument("--ca-file", help="CA bundle to verify --server")
    ops = p.add_subparsers(dest="operation", required=True)

    def waitable(q: argparse.ArgumentParser) -> None:
        q.add_argument("--wait", action="store_true", help="follow progress until done")
        q.add_argument("--timeout", type=float, default=900.0, help="seconds, with --wait")

    q = ops.add_parser("create", help="create a tenant")
    q.add_argument("name")
    q.add_argument("--admin-group", action="append", required=True, dest="admin_groups")
    q.add_argument("--view-group", action="append", default=[], dest="view_groups")
    q.add_argument(
        "--k8s-version",
        help="Kubernetes minor version, like 1.32 (default: the "
        "provisioner's: the local kube-apiserver's own, or vgate's vcluster default)",
    )
    q.add_argument("--ha", type=int, help="control-plane replicas (odd; >1 deploys etcd)")
    q.add_argument("--quota", help="host ResourceQuota, like cpu=10,memory=20Gi,pods=50")
    q.add_argument(
        "--isolate", action="store_true", help="LimitRange and NetworkPolicy in the host namespace"
    )
    q.add_argument("--values", type=Path, help="extra vcluster Helm values (YAML)")
    wake = q.add_mutually_exclusive_group()
    wake.add_argument("--auto-wake", dest="auto_wake", action="store_true", default=None)
    wake.add_argument("--no-auto-wake", dest="auto_wake", action="store_false")
    q.add_argument(
        "--token-passthrough",
        action="store_true",
        help="accept the tenant's own ServiceAccount tokens (checked by a TokenReview there)",
    )
    q.add_argument(
        "--service-account-issuer",
        help="their `iss`, with --token-passthrough (default: asked from the tenant)",
    )
    waitable(q)
    q = ops.add_parser("list", help="list tenants")
    q.add_argument("-o", "--output", choices=["table", "json"], default="table")
    q = ops.add_parser("show", help="spec, status, conditions, last error, kubectl URLs")
    q.add_argument("name")
    q.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    for verb in ("pause", "resume", "delete"):
        q = ops.add_parser(verb, help=f"{verb} a tenant")
        q.add_argument("name")
        waitable(q)
    q = ops.add_parser("upgrade", help="move a tenant to another Kubernetes version")
    q.add_argument("name")
    q.add_argument("--k8s-version", required=True)
    waitable(q)
    q = ops.add_parser(
        "token-passthrough", help="accept the tenant's own ServiceAccount tokens, or stop"
    )
    q.add_argument("name")
    onoff = q.add_mutually_exclusive_group(required=True)
    onoff.add_argument("--on", dest="enabled", action="store_true", default=None)
    onoff.add_argument("--off", dest="enabled", action="store_false")
    q.add_argument(
        "--service-account-issuer", help="their `iss`, with --on (default: asked from the tenant)"
    )
    waitable(q)


def run(args: argparse.Namespace) -> int:
    if logging.getLogger().level >= logging.INFO:  # progress shows the steps already
        logging.getLogger("vgate.lifecycle").setLevel(logging.ERROR)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130


def _fail(message: str, code: int) -> int:
    print(f"vgate tenant: {message}", file=sys.stderr)
    return code


def _spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": args.name,
        "admin_groups": args.admin_groups,
        "view_groups": args.view_groups,
        "isolate": args.isolate,
    }
    if args.k8s_version:
        spec["k8s_version"] = args.k8s_version
    if args.ha is not None:
        spec["ha"] = args.ha
    if args.auto_wake is not None:
        spec["auto_wake"] = args.auto_wake
    if args.token_passthrough:
        spec["token_passthrough"] = True
    if args.service_account_issuer is not None:
        spec["service_account_issuer"] = args.service_account_issuer
    if args.quota:
        try:
            spec["quota"] = parse_quota(args.quota)
        except ValueError as exc:
            raise Invalid([("quota", str(exc))]) from None
    if args.values:
        try:
            values = yaml.safe_load(args.values.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise Invalid([("values", f"{args.values}: {exc}")]) from None
        if not isinstance(values, dict):
            raise Invalid([("values", f"{args.values}: must be a YAML mapping")])
        spec["values"] = values
    return spec


class _Session:
    """The client plus, in direct mode, what is needed to reconcile locally."""

    def __init__(self, client: TenantClient, config: Any = None) -> None:
        self.client = client
        self.config = config


def _open(args: argparse.Namespace) -> _Session:
    if args.server:
        from gateway.lifecycle.tenant_client import ApiClient

        if not args.token:
            raise Invalid([("token", "--server needs --token or $VGATE_TOKEN")])
        return _Session(ApiClient(args.server, args.token, verify=args.ca_file or True))
    from gateway.config import ConfigError, load_config
    from gateway.lifecycle.assemble import open_store, tenant_operations
    from gateway.lifecycle.tenant_client import DirectClient

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise Invalid([("config", p) for p in map(str, exc.problems)]) from None
    if config.lifecycle is None:
        raise Invalid([("config", f"{args.config} has no lifecycle: section")])
    operations = tenant_operations(config, open_store(config))
    return _Session(
        DirectClient(
            operations,
            path_prefix=config.routing.path_prefix,
            public_url=config.lifecycle.public_url,
        ),
        config,
    )


async def _run(args: argparse.Namespace) -> int:
    try:
        session = _open(args)
    except Invalid as exc:
        return _fail(str(exc), EXIT_INVALID)
    except StoreError as exc:  # the store cannot be opened (damaged, unwritable)
        return _fail(str(exc), EXIT_FAILED)
    try:
        return await _operate(args, session)
    except Invalid as exc:
        return _fail(f"invalid input: {exc}", EXIT_INVALID)
    except TenantExists as exc:
        return _fail(str(exc), EXIT_EXISTS)
    except TenantNotFound as exc:
        return _fail(str(exc), EXIT_NOT_FOUND)
    except StoreError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except TimeoutError as exc:
        return _fail(f"timed out: {exc}", EXIT_TIMEOUT)
    except OSError as exc:  # unreachable server, unreadable store
        return _fail(str(exc), EXIT_FAILED)
    finally:
        await session.client.close()


async def _operate(args: argparse.Namespace, session: _Session) -> int:
    client = session.client
    op = args.operation
    target: str | None
    if op == "list":
        tenants = await client.list()
        print(json.dumps(tenants, indent=2) if args.output == "json" else _table(tenants))
        return EXIT_OK
    if op == "show":
        tenant = await client.get(args.name)
        print(
            json.dumps(tenant, indent=2)
            if args.output == "json"
            else yaml.safe_dump(tenant, sort_keys=False),
            end="",
        )
        return EXIT_OK
    if op == "create":
        tenant = await client.create(_spec_from_args(args))
        verb, target = "created", "Ready"
    elif op == "upgrade":
        tenant = await client.upgrade(args.name, args.k8s_version)
        verb = f"set to Kubernetes {tenant['k8s_version']}"
        target = "Ready"
        if tenant["desired"] == "paused":
            verb += " (applied when it resumes)"
            target = "Paused"
    elif op == "token-passthrough":
        tenant = await client.token_passthrough(
            args.name, args.enabled, args.service_account_issuer
        )
        verb = "token passthrough " + ("on" if args.enabled else "off")
        target = "Paused" if tenant["desired"] == "paused" else "Ready"
    else:
        tenant = await getattr(client, op)(args.name)
        verb = {"pause": "pausing", "resume": "resuming", "delete": "deleting"}[op]
        target = {"pause": "Paused", "resume": "Ready", "delete": None}[op]
    name = tenant["name"]
    if not args.wait:
        print(f'tenant "{name}" {verb}; follow it with: vgate tenant show {name}')
        return EXIT_OK
    generation = tenant["generation"]

    def done(t: Tenant | None) -> bool:
        if target is None:
            return t is None
        return t is not None and t["phase"] == target and t["observed_generation"] >= generation

    await _follow(session, name, done, args.timeout)
    print(f'tenant "{name}" ' + ("deleted" if target is None else target.lower()))
    return EXIT_OK


async def _follow(
    session: _Session, name: str, done: Callable[[Tenant | None], bool], limit: float
) -> None:
    progress = Progress(sys.stdout)
    same = SameError()
    driver = None
    if session.config is not None:
        driver = asyncio.create_task(_reconcile_here(session.config, name, progress.step))
    try:
        async with asyncio.timeout(limit):
            while True:
                if driver is not None and driver.done() and not driver.cancelled():
                    problem = driver.exception()
                    if problem is not None:
                        raise StoreError(f"reconciling here failed: {problem}")
                try:
                    tenant: Tenant | None = await session.client.get(name)
                except TenantNotFound:
                    tenant = None
                if tenant is not None:
                    progress.show(tenant)
                    if same.stuck(tenant):
                        progress.finish(f"{name}: failing")
                        raise Stuck(
                            f"tenant {name}: {same.limit} attempts in a row failed with "
                            f"the same error: {same.error} (the lifecycle manager "
                            f"retries it; see vgate tenant show {name})"
                        )
                if done(tenant):
                    progress.finish(f"{name}: done")
                    return
                await asyncio.sleep(0.5)
    except TimeoutError:
        progress.finish(f"{name}: still not done after {limit:.0f}s")
        raise TimeoutError(f"tenant {name} did not converge in {limit:.0f}s") from None
    finally:
        if driver is not None:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await driver


async def _reconcile_here(config: Any, name: str, on_step: Callable[[str, str], None]) -> None:
    """Reconcile `name` in this process while no gateway holds the manager lease."""
    from gateway.lifecycle.assemble import build_reconciler, open_store
    from gateway.lifecycle.stores.protocol import MANAGER_LEASE

    store = open_store(config)
    reconciler = build_reconciler(config, store)
    reconciler.on_step = on_step
    holder = reconciler.holder
    try:
        while True:
            if await store.acquire_lease(MANAGER_LEASE, holder, 15.0):
                converged = await reconciler.reconcile(name)
                if not converged:
                    record = await store.get(name)
                    await asyncio.sleep(
                        min(5.0, reconciler.backoff.delay(max(1, record.status.failures)))
                    )
                    continue
            await asyncio.sleep(0.5)
    except TenantNotFound:
        return
    finally:
        with contextlib.suppress(Exception):
            await store.release_lease(MANAGER_LEASE, holder)
        await store.close()


def _version(tenant: Tenant) -> str:
    """What the tenant's API server reports; `→ wanted` while that is another minor."""
    served, wanted = tenant.get("observed_k8s_version"), tenant["k8s_version"]
    if served and minor_of(served) == wanted:
        return served
    return f"{served or ''}→{wanted}"


def _table(tenants: list[Tenant]) -> str:
    import time

    rows = [("NAME", "PHASE", "HOSTNAME", "VERSION", "AGE", "LAST ACTIVITY")]
    for t in tenants:
        phase = t["phase"] + (" (retrying)" if t.get("last_error") else "")
        activity = (
            human_age(time.time() - t["last_activity"]) + " ago" if t.get("last_activity") else "-"
        )
        rows.append(
            (
                t["name"],
                phase,
                t.get("hostname") or "-",
                _version(t),
                human_age(t.get("age_seconds")),
                activity,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
