"""The local provisioner: its parts that need no binaries, and, with the real kube-apiserver
and etcd, versions found like setup-envtest lays them out, and an upgrade that restarts the
tenant on the new binary with its data kept."""

from __future__ import annotations

import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credentials.files import CredentialFiles
from gateway.lifecycle.model import TenantSpec
from gateway.lifecycle.operations import TenantOperations
from gateway.lifecycle.provisioning.local import LocalProvisioner, LocalSettings
from gateway.lifecycle.provisioning.local_pki import FILES, write_pki
from gateway.lifecycle.provisioning.role_aggregation import aggregated_rules
from gateway.lifecycle.reconciler import Reconciler


async def test_missing_binaries_are_a_clear_tenant_error(setup, tmp_path):
    provisioner = LocalProvisioner(
        CredentialFiles(tmp_path / "cred"),
        LocalSettings(assets_dir=tmp_path / "none", work_dir=tmp_path / "work"),
    )
    reconciler = Reconciler(setup.store, provisioner, backoff=Backoff(base=0, jitter=0))
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    assert not await reconciler.reconcile("t1")
    record = await setup.store.get("t1")
    assert record.status.last_error == (
        f"etcd: {tmp_path / 'none' / 'etcd'} not found: set $KUBEBUILDER_ASSETS or "
        "lifecycle.local.assets_dir to a folder with kube-apiserver and etcd"
    )
    # the route points at a port chosen once and kept
    route = provisioner.route(record.spec)
    assert route == provisioner.route(record.spec)
    assert route.server.startswith("https://127.0.0.1:")
    # and creating one through the operations says why no version can run
    operations = TenantOperations(setup.store, versions=provisioner.versions)
    with pytest.raises(ValidationError, match=f"no runnable kube-apiserver in {tmp_path}/none"):
        await operations.create(TenantSpec(name="t2", admin_groups=["a"]))


def test_pki_is_private_and_the_bootstrap_cert_is_system_masters(tmp_path):
    folder = tmp_path / "pki"
    write_pki(folder, "t1")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in FILES:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    admin = x509.load_pem_x509_certificate((folder / "admin.crt").read_bytes())
    org = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "system:masters"
    server = x509.load_pem_x509_certificate((folder / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}


def test_aggregated_roles_get_the_rules_of_the_roles_they_select():
    view = {
        "metadata": {"name": "view"},
        "aggregationRule": {
            "clusterRoleSelectors": [
                {"matchLabels": {"agg/view": "true"}},
                {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["read"]}]},
            ]
        },
    }
    read_pods = {"verbs": ["get"], "resources": ["pods"], "apiGroups": [""]}
    roles = [
        view,
        {"metadata": {"name": "b", "labels": {"agg/view": "true"}}, "rules": [read_pods]},
        {
            "metadata": {"name": "a", "labels": {"tier": "read"}},
            "rules": [{"verbs": ["list"], "resources": ["pods"], "apiGroups": [""]}, read_pods],
        },
        {
            "metadata": {"name": "c", "labels": {"agg/view": "false", "tier": "write"}},
            "rules": [{"verbs": ["delete"], "resources": ["pods"], "apiGroups": [""]}],
        },
    ]
    assert aggregated_rules(view, roles) == [  # by role name, each rule once
        {"verbs": ["list"], "resources": ["pods"], "apiGroups": [""]},
        read_pods,
    ]
    assert aggregated_rules(roles[1], roles) is None  # not an aggregated role
