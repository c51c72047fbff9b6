"""How `vgate login` and `vgate logout` trust the IdP's TLS certificate.

One value for both commands, and stored with the cached tokens, so that a logout (also
`--all`, which has no kubeconfig to read) reaches the IdP exactly as the login did.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


@dataclass(frozen=True)
class IssuerTrust:
    """A CA file, or base64 PEM data (as kubeconfigs carry it); neither: the system's CAs."""

    ca_file: str | None = None
    ca_data: str | None = None

    @classmethod
    def of(cls, ca_file: str | None, ca_data: str | None) -> IssuerTrust:
        """From command-line values (a relative CA file is made absolute)."""
        return cls(os.path.abspath(ca_file) if ca_file else None, ca_data or None)

    @property
    def given(self) -> bool:
        return bool(self.ca_file or self.ca_data)

    def or_else(self, other: IssuerTrust) -> IssuerTrust:
        """This trust when it names a CA, else `other`."""
        return self if self.given else other

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx verifies the IdP with; ValueError when the CA cannot be used."""
        import ssl  # not on the cached path

        if self.ca_data:
            try:
                pem = base64.b64decode(self.ca_data, validate=True).decode()
                return ssl.create_default_context(cadata=pem)
            except (binascii.Error, UnicodeDecodeError, ssl.SSLError) as exc:
                raise ValueError(
                    f"--issuer-ca-data is not a base64 PEM CA certificate: {exc}"
                ) from None
        if self.ca_file:
            try:
                return ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--issuer-ca-file {self.ca_file}: {exc}") from None
        return True
