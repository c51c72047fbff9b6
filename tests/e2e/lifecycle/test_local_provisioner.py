"""The local provisioner: its parts that need no binaries, and, with the real kube-apiserver
and etcd, versions found like setup-envtest lays them out, and an upgrade that restarts the
tenant on the new binary with its data kept."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.model import TenantSpec
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.local import LocalProvisioner, LocalSettings
from gateway.lifecycle.provisioning.local_process import running_executable, running_pid
from gateway.lifecycle.provisioning.local_process import stop as stop_process
from gateway.lifecycle.provisioning.local_versions import (
    find_binaries,
    local_versions,
    platform_suffix,
)
from gateway.lifecycle.reconciler import Reconciler
from tests.support.kube import AuditLog, require_kube
from tests.support.lifecycle.converge import run_until_converged
from tests.support.local_kube import processes_under, versioned_assets


def test_versions_are_found_the_way_setup_envtest_lays_them_out(tmp_path):
    require_kube()
    assets = versioned_assets(tmp_path, ("1.29.0", "1.29.2", "1.27.1"))
    k8s = tmp_path / "k8s"
    (k8s / f"1.30.0-{platform_suffix()}").mkdir()  # no binary in it
    (k8s / "1.31.0-plan9-mips").mkdir()  # another platform's
    (k8s / "1.31.0-plan9-mips" / "kube-apiserver").symlink_to(assets / "kube-apiserver")
    found = find_binaries(assets)
    assert sorted(found) == ["1.27", "1.28", "1.29"]
    assert found["1.28"].path == assets / "kube-apiserver"  # the assets folder's own
    assert found["1.28"].version == "v1.28.7"  # as the binary reports it
    assert found["1.29"].path == k8s / f"1.29.2-{platform_suffix()}" / "kube-apiserver"
    versions = local_versions(assets)
    assert versions.default == "1.28"
    assert versions.problem("1.30") == (
        f"Kubernetes 1.30 is not available here (available: "
        f"1.27 ({k8s}/1.27.1-{platform_suffix()}/kube-apiserver, v1.27.1), "
        f"1.28 ({assets}/kube-apiserver, v1.28.7), "
        f"1.29 ({k8s}/1.29.2-{platform_suffix()}/kube-apiserver, v1.29.2)); "
        f"put a kube-apiserver for it in {k8s}/<version>-{platform_suffix()}/ "
        "(setup-envtest's layout)"
    )
    # $KUBEBUILDER_ASSETS pointing into setup-envtest's store: the others are its siblings,
    # and its own binary counts at the version it reports
    inside = find_binaries(k8s / f"1.29.0-{platform_suffix()}")
    assert sorted(inside) == ["1.27", "1.28", "1.29"]
    assert inside["1.28"].path == k8s / f"1.29.0-{platform_suffix()}" / "kube-apiserver"


@pytest.mark.slow
async def test_upgrade_restarts_the_api_server_on_the_new_binary_with_its_data(setup, tmp_path):
    require_kube()
    assets = versioned_assets(tmp_path / "assets")
    work = tmp_path / "work"
    files = CredentialFiles(tmp_path / "credentials")
    provisioner = LocalProvisioner(files, LocalSettings(assets_dir=assets, work_dir=work))
    reconciler = Reconciler(
        setup.store, provisioner, backoff=Backoff(base=0.2, cap=1.0, jitter=0.0)
    )
    operations = TenantOperations(setup.store, versions=provisioner.versions)
    before = processes_under(work)
    try:
        created = await operations.create(TenantSpec(name="t1", admin_groups=["a"]))
        assert created.spec.k8s_version == "1.28"  # the assets folder's own binary
        record = await run_until_converged(reconciler, "t1", within=120)
        assert record.status.k8s_version == "v1.28.7"
        pid_file = work / "tenants" / "t1" / "pid"
        first_pid = running_pid(pid_file, "kube-apiserver")
        assert running_executable(pid_file, "kube-apiserver") == str(assets / "kube-apiserver")
        admin = await provisioner._admin("t1")
        try:
            await admin.apply(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "kept", "namespace": "default"},
                    "data": {"k": "v"},
                }
            )
            # no controller manager, yet the role groups' aggregated roles have rules
            view = await admin.get("rbac.authorization.k8s.io/v1", "ClusterRole", "view")
            assert any(
                "configmaps" in r["resources"] and r["verbs"] == ["get", "list", "watch"]
                for r in view["rules"]
            ), view["rules"]
        finally:
            await admin.close()

        with pytest.raises(ValidationError) as refused:
            await operations.upgrade("t1", "1.30")
        assert "Kubernetes 1.30 is not available here (available: 1.28" in str(refused.value)
        await operations.upgrade("t1", "1.29")
        record = await run_until_converged(reconciler, "t1", within=120)
        second_pid = running_pid(pid_file, "kube-apiserver")
        assert second_pid is not None and second_pid != first_pid
        assert running_executable(pid_file, "kube-apiserver") == str(
            tmp_path / "assets" / "k8s" / f"1.29.0-{platform_suffix()}" / "kube-apiserver"
        )
        # the folder said 1.29; the binary in it is what the tenant reports
        assert record.spec.k8s_version == "1.29" and record.status.k8s_version == "v1.28.7"
        admin = await provisioner._admin("t1")
        try:
            kept = await admin.get("v1", "ConfigMap", "kept", "default")
        finally:
            await admin.close()
        assert kept is not None and kept["data"] == {"k": "v"}
        # the tenant's audit log says who made the ConfigMap: the bootstrap credential
        made = [
            e
            for e in AuditLog(provisioner.audit_log("t1")).matching(verb="patch")
            if (e.get("objectRef") or {}).get("name") == "kept"
        ]
        assert made and made[0]["user"]["username"] == "vgate-bootstrap"

        await operations.delete("t1")
        assert await run_until_converged(reconciler, "t1", within=60) is None
        assert not (work / "tenants" / "t1").exists()
    finally:
        for pid_file in (work / "tenants").glob("*/pid"):
            stop_process(pid_file, "kube-apiserver")
        stop_process(work / "etcd" / "pid", "etcd")
    assert processes_under(work) == before == {}
