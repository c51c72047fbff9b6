"""The real directory: ldap3 connections reused from a bounded pool, one lookup per call
(synchronous; the service runs it in a worker thread)."""

from __future__ import annotations

import queue
import threading

import ldap3
from ldap3.core.exceptions import LDAPException

from gateway.config.model import LDAP
from gateway.directory.connect import Connector, close_quietly
from gateway.directory.entry import Membership
from gateway.directory.errors import DirectoryError
from gateway.directory.lookup import Lookup


def read_password(config: LDAP) -> str:
    try:
        return config.bind_password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise DirectoryError("config", f"cannot read bind_password_file: {exc}") from None


class LdapSource:
    """`lookup(value)` → Membership, or DirectoryError. Thread-safe; keeps at most
    `pool_size` idle connections and retries once on a fresh connection when a reused one
    turns out to be dead (the server restarted or dropped it for idleness)."""

    def __init__(self, config: LDAP, password: str | None = None) -> None:
        self.config = config
        self.connector = Connector(
            config, password if password is not None else read_password(config)
        )
        self.queries = Lookup(config)
        self._idle: queue.LifoQueue[ldap3.Connection] = queue.LifoQueue()
        self._closed = threading.Event()

    def lookup(self, value: str, *, chains: bool = False) -> Membership:
        for attempt in (1, 2):
            try:
                conn = self._idle.get_nowait()
                reused = True
            except queue.Empty:
                conn = self.connector.open()
                reused = False
            try:
                result = self.queries.run(conn, value, chains=chains)
            except (DirectoryError, LDAPException, OSError) as exc:
                close_quietly(conn)
                if reused and attempt == 1 and _connection_problem(exc):
                    continue
                if isinstance(exc, DirectoryError):
                    raise
                kind = "timeout" if "timed out" in str(exc).lower() else "connect"
                raise DirectoryError(kind, f"{type(exc).__name__}: {exc}") from None
            if self._closed.is_set() or self._idle.qsize() >= self.config.pool_size:
                close_quietly(conn)
            else:
                self._idle.put(conn)
            return result
        raise AssertionError("unreachable")

    def check(self) -> None:
        """Open and bind one connection (kept in the pool); DirectoryError if that fails."""
        conn = self.connector.open()
        if self._idle.qsize() < self.config.pool_size:
            self._idle.put(conn)
        else:
            close_quietly(conn)

    def close(self) -> None:
        self._closed.set()
        while True:
            try:
                close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


def _connection_problem(exc: BaseException) -> bool:
    return not isinstance(exc, DirectoryError) or exc.kind in ("connect", "timeout")
