from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credential_files import CredentialFiles
from gateway.lifecycle.helm_provisioner import HelmProvisioner, HelmSettings
from gateway.lifecycle.reconciler import Reconciler
from gateway.lifecycle.sqlite_store import SQLiteTenantStore
from tests.lifecycle.fakes import FakeHelm, FakeHost, World, connector
from tests.support.kube import ApiServer, Etcd, require_kube


@dataclass
class Setup:
    world: World
    store: SQLiteTenantStore
    files: CredentialFiles
    tmp: Path
    settings: HelmSettings = field(
        default_factory=lambda: HelmSettings(poll_seconds=0.0, ready_timeout=0.05))

    def reconciler(self) -> Reconciler:
        """A fresh reconciler (as after a restart) over the same store and world."""
        provisioner = HelmProvisioner(
            FakeHost(self.world), FakeHelm(self.world), connector(self.world), self.files,
            self.settings,
        )
        return Reconciler(self.store, provisioner, hostname=lambda n: f"{n}.k8s.example.com",
                          backoff=Backoff(base=0.0, cap=0.0, jitter=0.0), poll_seconds=0.01)


@pytest.fixture
async def setup(tmp_path: Path):
    store = SQLiteTenantStore(tmp_path / "tenants.db")
    yield Setup(World(), store, CredentialFiles(tmp_path / "credentials"), tmp_path)
    await store.close()


@pytest.fixture(scope="session")
def kube_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One real kube-apiserver (+ etcd) for the lifecycle tests that talk to a host cluster;
    each test works in a namespace of its own (`host_namespace`)."""
    require_kube()
    base = tmp_path_factory.mktemp("kube-host")
    with Etcd(base / "etcd") as etcd, ApiServer(base / "host", etcd) as api:
        yield api


@pytest.fixture
def host_namespace(kube_host: ApiServer) -> str:
    """A fresh namespace on `kube_host` (there is no namespace controller to delete it)."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    kube_host.kubectl("create", "namespace", name)
    return name
