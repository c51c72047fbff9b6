"""The local provisioner's parts that need no Kubernetes binaries."""

from __future__ import annotations

import stat

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.lifecycle.backoff import Backoff
from gateway.lifecycle.credential_files import CredentialFiles
from gateway.lifecycle.local_pki import FILES, write_pki
from gateway.lifecycle.local_provisioner import LocalProvisioner, LocalSettings
from gateway.lifecycle.model import TenantSpec
from gateway.lifecycle.reconciler import Reconciler


async def test_missing_binaries_are_a_clear_tenant_error(setup, tmp_path):
    provisioner = LocalProvisioner(CredentialFiles(tmp_path / "cred"),
                                   LocalSettings(assets_dir=tmp_path / "none",
                                                 work_dir=tmp_path / "work"))
    reconciler = Reconciler(setup.store, provisioner, backoff=Backoff(base=0, jitter=0))
    await setup.store.create(TenantSpec(name="t1", admin_groups=["a"]))
    assert not await reconciler.reconcile("t1")
    record = await setup.store.get("t1")
    assert record.status.last_error == (
        f"etcd: {tmp_path / 'none' / 'etcd'} not found: set $KUBEBUILDER_ASSETS or "
        "lifecycle.local.assets_dir to a folder with kube-apiserver and etcd")
    # the route points at a port chosen once and kept
    route = provisioner.route(record.spec)
    assert route == provisioner.route(record.spec)
    assert route.server.startswith("https://127.0.0.1:")


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
