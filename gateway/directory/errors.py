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


class DirectoryRefused(Exception):
    """The directory answered, but for this user the answer cannot be used (more groups
    or entries than `max_groups`): that user is refused (403), nobody else. Not an outage:
    the directory is not marked down and no stale groups are served for it."""


#: `DirectoryError.kind`s that belong to one user's answer, not to the directory's health
USER_KINDS = frozenset({"too_many"})
