"""The gateway's private CA as the portal offers it: PEM to download, fingerprints to check.

A browser warns about a gateway certificate from a private CA; the tenant page says how to
trust that CA and shows its SHA-256 fingerprint, to compare with the one the platform team
publishes before trusting a file fetched past such a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes


@dataclass(frozen=True)
class CertificateAuthority:
    pem: bytes
    fingerprints: tuple[str, ...]  # SHA-256, colon-separated hex, one per certificate

    @classmethod
    def from_pem(cls, pem: bytes) -> CertificateAuthority:
        """ValueError when `pem` holds no PEM certificate."""
        certs = x509.load_pem_x509_certificates(pem)
        return cls(pem, tuple(c.fingerprint(hashes.SHA256()).hex(":").upper() for c in certs))
