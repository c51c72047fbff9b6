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
