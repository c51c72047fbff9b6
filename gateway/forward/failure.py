"""What went wrong when an exchange got no usable response from its tenant."""

from __future__ import annotations

import ssl
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an exchange got no usable response from the tenant's API server."""

    why: str  # for the log and the audit line
    code: int = 502  # what the client gets (504: no answer in time)
    message: str = ""  # for the client, the tenant named; "" = the usual words for `code`
    retry: bool = False  # a stale keep-alive connection: try once more on a new one
    credential: bool = False  # the tenant rejected the gateway's own credential


def credential_rejected(tenant: str) -> Failure:
    """A 401 to a request the gateway impersonated: the tenant refused the gateway's own
    credential, not the user's. Not relayed (kubectl would tell the user to log in)."""
    return Failure(
        "the tenant's API server rejected the gateway's credential (401)",
        502,
        f"the gateway's own credential for tenant {tenant} was rejected by the tenant's "
        "API server (401 Unauthorized). This is not a problem with your login: a "
        "platform administrator must renew the gateway's credential for this tenant",
        credential=True,
    )


def connect_failed(tenant: str, exc: BaseException) -> Failure:
    """A connection to `tenant` that could not be made: a 502. A certificate that does not
    verify (not signed by the tenant's configured CA, or naming another host) is said so in
    the client's message, since the API server is reachable but not trusted; nothing was
    sent to it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(
            f"connect failed: {exc}",
            502,
            f"the API server of tenant {tenant} presented a TLS certificate the gateway "
            f"does not trust ({exc.verify_message}); nothing was sent to it",
        )
    return Failure(f"connect failed: {exc}")
