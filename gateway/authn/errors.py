"""Authentication failures, carrying the metric label and the audit reason."""

from __future__ import annotations


class AuthError(Exception):
    """The caller is not authenticated (401), claims a forbidden identity (403), or the
    token cannot be checked now because its issuer's keys could not be loaded (503).

    `reason` is a short stable label for metrics; `detail` goes to the audit log only.
    """

    def __init__(self, reason: str, detail: str, *, code: int = 401) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.code = code
