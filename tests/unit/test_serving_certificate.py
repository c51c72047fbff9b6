"""A renewed serving certificate is served without a restart; a broken one is not."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.http.serving_certificate import ServingCertificate
from tests.support.gateway_thread import GatewayThread
from tests.support.pki import TestCA


def served_name(port: int, ca_file: Path) -> str:
    """The common name of the certificate a fresh TLS handshake gets."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def install(source: Path, key: Path, cert_file: Path, key_file: Path) -> None:
    """Swap the pair in like the kubelet does: new files, then one rename each."""
    for src, dst in ((source, cert_file), (key, key_file)):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def test_the_live_context_takes_a_renewed_pair_and_refuses_a_broken_one(tmp_path, caplog):
    ca = TestCA(tmp_path / "ca")
    first, second = ca.issue("first", ["localhost"]), ca.issue("second", ["localhost"])
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    install(first.cert_file, first.key_file, cert_file, key_file)
    serving = ServingCertificate(cert_file, key_file, check_seconds=0)
    assert not serving.check()  # unchanged
    install(second.cert_file, first.key_file, cert_file, key_file)  # key does not match
    assert not serving.check()
    assert "not loaded, keeping the previous one" in caplog.text
    install(second.cert_file, second.key_file, cert_file, key_file)
    assert serving.check() and serving.reloads == 1
    cert_file.unlink()  # mid-swap: nothing to load, nothing changes
    assert not serving.check()


def test_missing_pair_at_start_is_an_error(tmp_path):
    with pytest.raises(OSError):
        ServingCertificate(tmp_path / "none.crt", tmp_path / "none.key")


def test_the_gateway_serves_the_renewed_certificate_without_a_restart(tmp_path):
    ca = TestCA(tmp_path / "ca")
    first, second = ca.issue("first", ["localhost"]), ca.issue("second", ["localhost"])
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    install(first.cert_file, first.key_file, cert_file, key_file)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "none.yaml").write_text(
        yaml.safe_dump({"tenant": "*", "roles": {"view": {"groups": ["nobody"]}}})
    )
    config = {
        "tls": {"cert_file": str(cert_file), "key_file": str(key_file), "reload_seconds": 0.1},
        "oidc": {"issuers": [{"issuer": "https://idp.example.com", "audiences": ["vgate"]}]},
        "policies": str(tmp_path / "policies"),
    }
    with GatewayThread(tmp_path / "gw", config) as gw:
        assert served_name(gw.port, ca.cert_file) == "first"
        kept = httpx.Client(verify=ssl.create_default_context(cafile=str(ca.cert_file)), timeout=5)
        assert kept.get(f"https://localhost:{gw.port}/healthz").status_code == 200
        install(second.cert_file, second.key_file, cert_file, key_file)
        deadline = time.monotonic() + 5
        while served_name(gw.port, ca.cert_file) != "second":
            assert time.monotonic() < deadline, "the renewed certificate was never served"
            time.sleep(0.05)
        # the keep-alive connection made before the renewal goes on working
        assert kept.get(f"https://localhost:{gw.port}/healthz").status_code == 200
        kept.close()
