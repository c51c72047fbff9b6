"""The embedded `TenantStore`: one SQLite file in WAL mode, shared by every process.

Each instance owns one connection used from worker threads (`asyncio.to_thread`) behind a
lock. Writes are compare-and-swap on the `version` column. `revision()` combines SQLite's
`PRAGMA data_version` (which changes when *another* connection commits) with a count of this
instance's own writes: cheap to poll, and it moves on every commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from gateway.lifecycle.model import (
    TenantRecord,
    TenantSpec,
    TenantStatus,
    field_problems,
    loaded_status,
    stored_spec,
    stored_status,
)
from gateway.lifecycle.stores.protocol import (
    Conflict,
    StoreError,
    TenantExists,
    TenantNotFound,
    UnreadableRecord,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    version INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    created_at REAL NOT NULL,
    last_activity REAL
)
"""
_LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
)
"""
log = logging.getLogger("vgate.lifecycle.store")
_T = TypeVar("_T")

_COLUMNS = "name, spec, status, version, generation, created_at, last_activity"
_NAMES_PER_QUERY = 500  # under SQLite's smallest limit on bound parameters (999)


def _json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))


class SQLiteTenantStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._writes = 0  # this connection's commits (data_version does not count them)
        self._unreadable: dict[str, int] = {}  # name -> stored version already warned about
        try:  # a damaged or unwritable file is a `StoreError` naming it, as later errors are
            self._db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            with self._lock:
                self._wal()
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA busy_timeout=10000")
                self._db.execute(_SCHEMA)
                self._db.execute(_LEASES)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc
        os.chmod(self.path, 0o600)

    def _failed(self, exc: sqlite3.Error) -> StoreError:
        """One of SQLite's own failures, as the `StoreError` naming this store's file."""
        return StoreError(f"tenant store {self.path}: {exc}")

    def _wal(self) -> None:
        """Switch to WAL. Several processes opening a new store at once (gateway workers)
        race for the exclusive lock this needs, and SQLite answers "locked" at once rather
        than waiting on the busy timeout: retry for a while."""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- sync core (runs in a thread) ------------------------------------------------------

    def _call(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    @staticmethod
    def _record(row: tuple) -> TenantRecord:
        """The record of a row; `UnreadableRecord` when this version cannot read it."""
        name, spec, status, version, generation, created_at, last_activity = row
        try:
            return TenantRecord(
                spec=TenantSpec.model_validate_json(spec),
                status=loaded_status(json.loads(status)),
                version=version,
                generation=generation,
                created_at=created_at,
                last_activity=last_activity,
            )
        except ValidationError as exc:
            why = "; ".join(f"{field}: {msg}" for field, msg in field_problems(exc)[:5])
            raise UnreadableRecord(name, why) from exc
        except ValueError as exc:  # not JSON at all
            raise UnreadableRecord(name, str(exc)) from exc

    def _readable(self, rows: list[tuple]) -> list[TenantRecord]:
        """The records of `rows`, leaving out (with one warning per stored version) those
        this version cannot read: one such tenant must not stop the others' listing."""
        records = []
        for row in rows:
            try:
                records.append(self._record(row))
            except UnreadableRecord as exc:
                name, version = row[0], row[3]
                with self._lock:
                    warned = self._unreadable.get(name) == version
                    self._unreadable[name] = version
                if not warned:
                    log.warning("%s; left out until it can be read", exc)
        return records

    def _get(self, name: str) -> TenantRecord:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM tenants WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            raise TenantNotFound(name)
        return self._record(row)

    def _list(self) -> list[TenantRecord]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM tenants ORDER BY name").fetchall()
        return self._readable(rows)

    def _fingerprints(self) -> dict[str, tuple[float, int]]:
        with self._lock:
            rows = self._db.execute("SELECT name, created_at, version FROM tenants").fetchall()
        return {name: (created_at, version) for name, created_at, version in rows}

    def _get_many(self, names: list[str]) -> list[TenantRecord]:
        rows: list[tuple] = []
        with self._lock:
            for start in range(0, len(names), _NAMES_PER_QUERY):
                chunk = names[start : start + _NAMES_PER_QUERY]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT {_COLUMNS} FROM tenants WHERE name IN ({marks}) ORDER BY name"
                rows += self._db.execute(sql, chunk).fetchall()
        return self._readable(rows)

    def _create(self, spec: TenantSpec) -> TenantRecord:
        try:
            self._call(
                "INSERT INTO tenants (name, spec, status, version, generation, created_at) "
                "VALUES (?, ?, ?, 1, 1, ?)",
                (
                    spec.name,
                    _json(stored_spec(spec)),
                    _json(stored_status(TenantStatus())),
                    time.time(),
                ),
            )
        except sqlite3.IntegrityError:
            raise TenantExists(spec.name) from None
        self._writes += 1
        return self._get(spec.name)

    def _swap(self, name: str, version: int, sql: str, args: tuple) -> TenantRecord:
        with self._lock:
            changed = self._db.execute(sql, (*args, name, version)).rowcount
        if changed != 1:
            self._get(name)  # TenantNotFound if it is gone
            raise Conflict(name)
        self._writes += 1
        return self._get(name)

    def _update_spec(self, name: str, spec: TenantSpec, version: int) -> TenantRecord:
        return self._swap(
            name,
            version,
            "UPDATE tenants SET spec = ?, version = version + 1, generation = generation + 1 "
            "WHERE name = ? AND version = ?",
            (_json(stored_spec(spec)),),
        )

    def _update_status(self, name: str, status: TenantStatus, version: int) -> TenantRecord:
        return self._swap(
            name,
            version,
            "UPDATE tenants SET status = ?, version = version + 1 WHERE name = ? AND version = ?",
            (_json(stored_status(status)),),
        )

    def _delete(self, name: str, version: int) -> None:
        with self._lock:
            changed = self._db.execute(
                "DELETE FROM tenants WHERE name = ? AND version = ?", (name, version)
            ).rowcount
        if changed != 1:
            self._get(name)
            raise Conflict(name)
        self._writes += 1

    def _record_activity(self, seen: dict[str, float]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE tenants SET last_activity = ? WHERE name = ? "
                    "AND (last_activity IS NULL OR last_activity < ?)",
                    [(t, n, t) for n, t in seen.items()],
                )
                self._db.execute("COMMIT")
                self._writes += 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _acquire(self, lease: str, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires WHERE leases.holder = excluded.holder "
                "OR leases.expires < ?",
                (lease, holder, now + ttl, now),
            )
            row = self._db.execute("SELECT holder FROM leases WHERE name = ?", (lease,)).fetchone()
        return row is not None and row[0] == holder

    def _release(self, lease: str, holder: str) -> None:
        self._call("DELETE FROM leases WHERE name = ? AND holder = ?", (lease, holder))

    def _revision(self) -> int:
        with self._lock:
            others = self._db.execute("PRAGMA data_version").fetchone()[0]
            return (others << 32) + self._writes

    # -- async API -------------------------------------------------------------------------

    async def _off(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run `call` in a worker thread. SQLite's own failures (the file locked by another
        process past the busy timeout, disk full, a read-only directory, a damaged file)
        come out as `StoreError` naming the file, as every store's errors do: the CLI
        prints them, the admin API answers a `Status`, the manager logs and retries."""
        try:
            return await asyncio.to_thread(call, *args)
        except sqlite3.Error as exc:
            raise self._failed(exc) from exc

    async def create(self, spec: TenantSpec) -> TenantRecord:
        return await self._off(self._create, spec)

    async def get(self, name: str) -> TenantRecord:
        return await self._off(self._get, name)

    async def fingerprints(self) -> dict[str, tuple[float, int]]:
        return await self._off(self._fingerprints)

    async def get_many(self, names: Iterable[str]) -> list[TenantRecord]:
        return await self._off(self._get_many, list(names))

    async def list(self) -> list[TenantRecord]:
        return await self._off(self._list)

    async def update_spec(self, name: str, spec: TenantSpec, version: int) -> TenantRecord:
        return await self._off(self._update_spec, name, spec, version)

    async def update_status(self, name: str, status: TenantStatus, version: int) -> TenantRecord:
        return await self._off(self._update_status, name, status, version)

    async def delete(self, name: str, version: int) -> None:
        await self._off(self._delete, name, version)

    async def record_activity(self, seen: dict[str, float]) -> None:
        if seen:
            await self._off(self._record_activity, dict(seen))

    async def acquire_lease(self, lease: str, holder: str, ttl: float) -> bool:
        return await self._off(self._acquire, lease, holder, ttl)

    async def release_lease(self, lease: str, holder: str) -> None:
        await self._off(self._release, lease, holder)

    async def revision(self) -> int:
        return await self._off(self._revision)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
