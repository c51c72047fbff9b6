"""The gateway's own credential for a tenant's API server, re-read when its file changes."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("vgate.credentials")

MAX_TOKEN_FILE_BYTES = 64 * 1024


class TokenFile:
    """A bearer token kept in a file (e.g. a projected ServiceAccount token).

    `header()` is called on every request: it looks at the file's mtime at most once per
    `check_interval` seconds and re-reads it when it changed. A file that becomes
    unreadable keeps the last good token (and logs), so a rotation glitch does not
    take a tenant down.
    """

    def __init__(self, path: Path, *, check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval = check_interval
        self._mtime: float | None = None
        self._checked = 0.0
        self._header = b""
        self._reload()

    def _reload(self) -> None:
        try:
            stat = os.stat(self.path)
            if stat.st_mtime_ns == self._mtime:
                return
            raw = self.path.read_bytes()[: MAX_TOKEN_FILE_BYTES + 1]
        except OSError as exc:
            if not self._header:
                raise
            log.warning("token file %s unreadable, keeping the previous token: %s", self.path, exc)
            return
        token = raw.strip()
        usable = 0 < len(token) <= MAX_TOKEN_FILE_BYTES and all(0x21 <= c <= 0x7E for c in token)
        if not usable:
            if not self._header:
                raise ValueError(f"{self.path}: not a usable bearer token")
            log.warning("token file %s holds no usable token, keeping the previous one", self.path)
            return
        self._header = b"Bearer " + token
        self._mtime = stat.st_mtime_ns

    def header(self) -> bytes:
        """The `Authorization` header value to send upstream."""
        now = time.monotonic()
        if now - self._checked >= self.check_interval:
            self._checked = now
            self._reload()
        return self._header
