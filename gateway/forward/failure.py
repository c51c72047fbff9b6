"""What went wrong when an exchange got no usable response from its tenant."""

from __future__ import annotations

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
