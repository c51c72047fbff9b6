"""Why a directory lookup produced no answer."""

from __future__ import annotations


class DirectoryError(Exception):
    """The directory could not answer (unreachable, timed out, refused the bind, …).

    `kind` is a short label for metrics; the message is for logs and operators."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class DirectoryUnavailable(Exception):
    """No fresh answer and nothing cached young enough to serve: fail closed (503)."""
