"""Build the lifecycle's parts from the validated `lifecycle:` config section."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from gateway.config.model import GatewayConfig, Lifecycle
from gateway.lifecycle.credentials.bootstrap import TokenPolicy
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.credentials.secrets import CredentialSecrets
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.steps import Provisioner
from gateway.lifecycle.stores.protocol import TenantStore
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore
from gateway.lifecycle.versions import KubernetesVersions

if TYPE_CHECKING:
    from gateway.lifecycle.operations import TenantOperations

DEFAULT_ASSETS = Path("/usr/local/kubebuilder/bin")


def lifecycle_of(config: GatewayConfig) -> Lifecycle:
    if config.lifecycle is None:
        raise ValueError("this config has no lifecycle: section")
    return config.lifecycle


def store_namespace(config: GatewayConfig) -> str:
    """The kubernetes store's namespace: configured, else the pod's own (ValueError if
    neither is known)."""
    from gateway.lifecycle.stores.kubernetes import in_cluster_namespace

    namespace = lifecycle_of(config).store_namespace or in_cluster_namespace()
    if namespace is None:
        raise ValueError(
            "lifecycle.store_namespace is not set and this is not a pod "
            "(no service account namespace file): set it"
        )
    return namespace


def open_store(config: GatewayConfig) -> TenantStore:
    lc = lifecycle_of(config)
    if lc.store_backend == "kubernetes":
        from gateway.lifecycle.stores.kubernetes import KubernetesTenantStore

        return KubernetesTenantStore(
            namespace=store_namespace(config),
            lease_name=lc.lease_name,
            kubeconfig=lc.store_kubeconfig,
        )
    return SQLiteTenantStore(lc.store)


def shared_credentials(config: GatewayConfig) -> CredentialSecrets | None:
    """With the kubernetes store, the gateway's tenant credentials live in Secrets beside the
    Tenant objects (published by the manager, mirrored into files by every worker)."""
    lc = lifecycle_of(config)
    if lc.store_backend != "kubernetes":
        return None
    from gateway.lifecycle.kube import LightkubeAPI

    return CredentialSecrets(
        LightkubeAPI.from_path(lc.store_kubeconfig),
        store_namespace(config),
        CredentialFiles(lc.credentials_dir),
    )


def hostname_for(config: GatewayConfig) -> Callable[[str], str | None]:
    domain = config.routing.base_domain
    return (lambda name: f"{name}.{domain}") if domain else (lambda name: None)


def assets_dir(config: GatewayConfig) -> Path:
    configured = lifecycle_of(config).local.assets_dir
    if configured is not None:
        return configured
    env = os.environ.get("KUBEBUILDER_ASSETS")
    return Path(env) if env else DEFAULT_ASSETS


def kubernetes_versions(config: GatewayConfig) -> Callable[[], KubernetesVersions]:
    """What the configured provisioner can run (asked again each time: binaries come and go),
    without building the provisioner."""
    if lifecycle_of(config).provisioner == "local":
        from gateway.lifecycle.provisioning.local_versions import local_versions

        assets = assets_dir(config)
        return lambda: local_versions(assets)
    from gateway.lifecycle.provisioning.vcluster_values import VCLUSTER_VERSIONS

    return lambda: VCLUSTER_VERSIONS


def tenant_operations(config: GatewayConfig, store: TenantStore) -> TenantOperations:
    """The tenant operations on `store`, refusing static tenants' names and versions the
    provisioner cannot run."""
    from gateway.lifecycle.operations import TenantOperations

    return TenantOperations(
        store, static_tenants=[t.name for t in config.tenants], versions=kubernetes_versions(config)
    )


def build_provisioner(config: GatewayConfig) -> Provisioner:
    lc = lifecycle_of(config)
    files = CredentialFiles(lc.credentials_dir)
    token = TokenPolicy(seconds=lc.token_seconds)
    if lc.provisioner == "local":
        from gateway.lifecycle.provisioning.local import LocalProvisioner, LocalSettings

        return LocalProvisioner(
            files,
            LocalSettings(assets_dir=assets_dir(config), work_dir=lc.local.work_dir, token=token),
        )
    from gateway.lifecycle.kube import LightkubeAPI
    from gateway.lifecycle.provisioning.connect import connect
    from gateway.lifecycle.provisioning.helm import (
        HelmProvisioner,
        HelmSettings,
        load_base_values,
    )
    from gateway.lifecycle.provisioning.helm_runner import HelmRunner

    helm = lc.helm
    settings = HelmSettings(
        chart=helm.chart,
        repo=helm.repo,
        chart_version=helm.chart_version,
        namespace_prefix=helm.namespace_prefix,
        pod_security=helm.pod_security,
        gateway_namespace=helm.gateway_namespace,
        manager_cluster_role=helm.manager_cluster_role,
        manager_service_account=helm.manager_service_account,
        base_values=load_base_values(helm.values_file),
        ready_timeout=helm.ready_timeout_seconds,
        token=token,
    )
    runner = HelmRunner(helm.binary, kubeconfig=str(helm.kubeconfig) if helm.kubeconfig else None)
    return HelmProvisioner(
        LightkubeAPI.from_path(helm.kubeconfig),
        runner,
        connect,
        files,
        settings,
        shared=shared_credentials(config),
    )


def build_reconciler(config: GatewayConfig, store: TenantStore) -> Reconciler:
    lc = lifecycle_of(config)
    return Reconciler(
        store,
        build_provisioner(config),
        hostname=hostname_for(config),
        auto_wake_default=lc.auto_wake,
        poll_seconds=lc.poll_seconds,
    )


def lifecycle_problems(config: GatewayConfig) -> list[str]:
    """What `check-config` reports about the lifecycle beyond the schema."""
    import shutil

    import yaml

    lc = lifecycle_of(config)
    problems = []
    if lc.provisioner == "helm":
        if lc.helm.values_file is not None:
            try:
                from gateway.lifecycle.provisioning.helm import load_base_values

                load_base_values(lc.helm.values_file)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                problems.append(f"lifecycle.helm.values_file: {exc}")
        if shutil.which(lc.helm.binary) is None:
            problems.append(
                f"lifecycle.helm.binary: {lc.helm.binary!r} not found on PATH "
                "(install Helm 3 or set the path)"
            )
        if lc.helm.kubeconfig is not None and not lc.helm.kubeconfig.is_file():
            problems.append(f"lifecycle.helm.kubeconfig: file not found: {lc.helm.kubeconfig}")
    else:
        assets = assets_dir(config)
        for binary in ("kube-apiserver", "etcd"):
            if not (assets / binary).is_file():
                problems.append(
                    f"lifecycle.local.assets_dir: {assets / binary} not found "
                    "(set $KUBEBUILDER_ASSETS or lifecycle.local.assets_dir)"
                )
    if lc.store_backend == "kubernetes":
        try:
            store_namespace(config)
        except ValueError as exc:
            return [*problems, str(exc)]
        if lc.store_kubeconfig is not None and not lc.store_kubeconfig.is_file():
            return [*problems, f"lifecycle.store_kubeconfig: file not found: {lc.store_kubeconfig}"]
    elif not lc.store.exists():
        return problems
    import asyncio

    from gateway.lifecycle.stores.protocol import StoreError

    async def names() -> list[str]:
        store = open_store(config)
        try:
            return [r.name for r in await store.list()]
        finally:
            await store.close()

    try:
        stored = asyncio.run(names())
    except (StoreError, OSError, ValueError) as exc:
        return [*problems, f"lifecycle store: {exc}"]
    static = {t.name for t in config.tenants}
    where = lc.store if lc.store_backend == "sqlite" else f"namespace {store_namespace(config)}"
    for name in stored:
        if name in static:
            problems.append(
                f"tenants: {name!r} is both configured statically and "
                f"managed by the lifecycle store ({where})"
            )
    return problems


@dataclass(frozen=True)
class AdminApp:
    """The admin API and what to close when the gateway stops."""

    app: Starlette
    close: Callable[[], Awaitable[None]]


def build_admin_app(config: GatewayConfig, authenticate, *, prefix: str = "/admin") -> AdminApp:
    """The admin API for this config; `authenticate(token) -> Identity` is the gateway's
    authenticator. Mount it at `/admin/` of the gateway (the app expects `prefix` in its
    paths; pass prefix="" when the mount strips it)."""
    from gateway.lifecycle.admin_api import admin_app, platform_admin_check

    lc = lifecycle_of(config)
    store = open_store(config)
    operations = tenant_operations(config, store)
    app = admin_app(
        operations,
        authenticate=authenticate,
        is_platform_admin=platform_admin_check(lc.platform_admin_groups, lc.platform_admin_users),
        prefix=prefix,
        path_prefix=config.routing.path_prefix,
        public_url=lc.public_url,
    )
    return AdminApp(app, store.close)
