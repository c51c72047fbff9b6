"""The token cache: one JSON file per (issuer, client id, user selection), only for its owner.

Files are written atomically (a temporary file in the same folder, fsync, rename) with
mode 0600 in a 0700 folder. `TokenCache.locked(key)` holds the entry's lock
(`gateway.login.lock`), so concurrent plugin processes (kubectl runs several) wait for the
one that is logging in or refreshing and then find its result. An entry also keeps how its
IdP was trusted (CA file or data), so `vgate logout` revokes with the same trust as login.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.login.lock import EntryLock

MAX_ENTRY_BYTES = 256 * 1024


@dataclass(frozen=True)
class CacheKey:
    issuer: str
    client_id: str
    user: str = ""  # a user selection (login hint); "" = the default user

    @property
    def name(self) -> str:
        raw = "\0".join((self.issuer, self.client_id, self.user)).encode()
        return hashlib.sha256(raw).hexdigest()[:40]


@dataclass(frozen=True)
class CachedTokens:
    issuer: str
    client_id: str
    user: str
    id_token: str
    refresh_token: str | None
    expires_at: float  # the ID token's exp
    issuer_ca_file: str | None = None  # how the IdP's TLS certificate was trusted at login
    issuer_ca_data: str | None = None  # (base64 PEM); both None: the system's trust store

    def valid_for(self, now: float, margin: float) -> bool:
        return bool(self.id_token) and self.expires_at - margin > now


def default_cache_dir() -> Path:
    explicit = os.environ.get("VGATE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vgate" / "tokens"


class TokenCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = Path(directory) if directory else default_cache_dir()

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.dir, 0o700)

    def path(self, key: CacheKey) -> Path:
        return self.dir / f"{key.name}.json"

    def locked(
        self, key: CacheKey, *, timeout: float, notify: Callable[[str], None] | None = None
    ) -> EntryLock:
        """The entry's exclusive lock, waiting at most `timeout` s for another holder."""
        self._ensure_dir()
        return EntryLock(self.dir / f"{key.name}.lock", timeout=timeout, notify=notify)

    def load(self, key: CacheKey) -> CachedTokens | None:
        """The entry, or None when absent, unreadable or not for this key."""
        try:
            with open(self.path(key), "rb") as f:
                raw = f.read(MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(raw) > MAX_ENTRY_BYTES:
            return None
        try:
            data = json.loads(raw)
            entry = CachedTokens(**data)
        except (ValueError, TypeError):
            return None
        if (entry.issuer, entry.client_id, entry.user) != (key.issuer, key.client_id, key.user):
            return None
        return entry

    def store(self, entry: CachedTokens) -> None:
        """Replace the entry atomically; the file is 0600 from its first byte."""
        self._ensure_dir()
        key = CacheKey(entry.issuer, entry.client_id, entry.user)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{key.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(asdict(entry), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove(self, key: CacheKey) -> CachedTokens | None:
        """Delete one entry; returns what it held (for revoking its refresh token)."""
        entry = self.load(key)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(key))
        return entry

    def entries(self) -> list[CachedTokens]:
        """Every readable entry (for `vgate logout --all` / by issuer)."""
        out: list[CachedTokens] = []
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*.json")):
            try:
                data = json.loads(p.read_bytes()[:MAX_ENTRY_BYTES])
                out.append(CachedTokens(**data))
            except (OSError, ValueError, TypeError):
                continue
        return out
