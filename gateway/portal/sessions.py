"""Server-side sign-out for the portal's signed session cookies.

The session stays in the signed cookie (starlette's `SessionMiddleware`); a signed-in
session also carries a random id (`sid`) and its issue time. Signing out writes the id into
a list of signed-out sessions, kept until the session's own absolute end (after that the
cookie is refused anyway), and every request checks that list: a copy of the cookie stops
working the moment the sign-out returns.

The list is a SQLite file (WAL), so every worker process of one host sees a sign-out at
once, whichever worker handled it. It is bounded: with `max_entries` unexpired sign-outs
already listed, the list is emptied and every session issued until that moment is refused
(`not_before`): everyone signs in again rather than a sign-out being forgotten. A list that
cannot be read fails closed (the caller answers 503).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import anyio.to_thread

log = logging.getLogger("vgate.portal")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS signed_out (sid TEXT PRIMARY KEY, until REAL NOT NULL) "
    "WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS signed_out_until ON signed_out (until)",
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v REAL NOT NULL)",
)
_CHECK = (
    "SELECT (SELECT count(*) FROM signed_out WHERE sid = ? AND until > ?), "
    "(SELECT v FROM meta WHERE k = 'not_before')"
)


class SessionStoreError(Exception):
    """The list of signed-out sessions cannot be read or written."""


class SignedOutSessions:
    """The signed-out session ids in one SQLite file, shared by the host's workers."""

    def __init__(self, path: Path, *, max_entries: int) -> None:
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        with self._lock:
            self._connection()  # a file that cannot be used stops the start, with its path

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (a connection never crosses a fork)."""
        if self._db is not None and self._pid == os.getpid():
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            deadline = time.monotonic() + 5.0
            while True:  # workers opening a new file at once race for WAL's exclusive lock
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            for statement in _SCHEMA:
                db.execute(statement)
            os.chmod(self.path, 0o600)
        except (sqlite3.Error, OSError) as exc:
            raise SessionStoreError(f"portal.session_store_file {self.path}: {exc}") from None
        self._db, self._pid = db, os.getpid()
        return db

    # -- sync core (runs in a worker thread) ----------------------------------------------

    def _is_signed_out(self, sid: str, issued_at: float) -> bool:
        with self._lock:
            try:
                listed, not_before = (
                    self._connection().execute(_CHECK, (sid, time.time())).fetchone()
                )
            except sqlite3.Error as exc:
                raise SessionStoreError(f"portal.session_store_file {self.path}: {exc}") from None
        return bool(listed) or (not_before is not None and issued_at <= not_before)

    def _sign_out(self, sid: str, until: float) -> None:
        with self._lock:
            db = self._connection()
            now = time.time()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute("DELETE FROM signed_out WHERE until <= ?", (now,))
                    (count,) = db.execute("SELECT count(*) FROM signed_out").fetchone()
                    if count >= self.max_entries:
                        db.execute("DELETE FROM signed_out")
                        db.execute(
                            "INSERT OR REPLACE INTO meta (k, v) VALUES ('not_before', ?)", (now,)
                        )
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO signed_out (sid, until) VALUES (?, ?)",
                            (sid, until),
                        )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise SessionStoreError(f"portal.session_store_file {self.path}: {exc}") from None
        if count >= self.max_entries:
            log.warning(
                "portal: %d signed-out sessions are listed (the bound): every session "
                "issued so far is refused now; users sign in again",
                count,
            )

    # -- async API ------------------------------------------------------------------------

    async def is_signed_out(self, sid: str, issued_at: float) -> bool:
        """Whether session `sid` (issued at `issued_at`) was signed out; SessionStoreError
        when that cannot be told."""
        return await anyio.to_thread.run_sync(self._is_signed_out, sid, issued_at)

    async def sign_out(self, sid: str, until: float) -> None:
        """List `sid` as signed out until `until` (the session's absolute end)."""
        await anyio.to_thread.run_sync(self._sign_out, sid, until)

    def count(self) -> int:
        """Listed sign-outs, expired ones included until the next sign-out purges them."""
        with self._lock:
            (n,) = self._connection().execute("SELECT count(*) FROM signed_out").fetchone()
        return int(n)
