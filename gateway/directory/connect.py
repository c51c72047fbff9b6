"""Connections to the directory: ordered failover over the configured URLs, LDAPS or
StartTLS with CA verification, a simple bind, timeouts, no referral chasing."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException

from gateway.config.model import LDAP
from gateway.directory.errors import DirectoryError

log = logging.getLogger("vgate.directory")


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    use_ssl: bool


def endpoints(config: LDAP) -> list[Endpoint]:
    out = []
    for url in config.urls:
        parts = urlsplit(url)
        use_ssl = parts.scheme == "ldaps"
        host = parts.hostname or ""
        out.append(Endpoint(url, host, parts.port or (636 if use_ssl else 389), use_ssl))
    return out


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bind_failure(result: dict, bind_dn: str) -> DirectoryError:
    message = str(result.get("message") or "")
    description = result.get("description") or "bind failed"
    if description == "invalidCredentials":
        detail = "wrong password" if "data 52e" in message else "invalid credentials"
        return DirectoryError(
            "bind", f"the directory refused the bind as {bind_dn}: {detail} ({message.strip()})"
        )
    return DirectoryError("bind", f"bind as {bind_dn} failed: {description} {message}".strip())


class Connector:
    """Opens bound connections, trying the URLs in order and starting with the one that
    worked last. Thread-safe; each connection is used by one thread at a time."""

    def __init__(self, config: LDAP, password: str) -> None:
        self.config = config
        self._password = password
        self._endpoints = endpoints(config)
        self._preferred = 0
        self._lock = threading.Lock()
        self._tls = None
        if config.tls != "none":
            self._tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
                ca_certs_file=str(config.ca_file) if config.ca_file else None,
            )

    def _server(self, ep: Endpoint) -> ldap3.Server:
        tls = self._tls
        if tls is not None and not _is_ip(ep.host):
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                version=ssl.PROTOCOL_TLS_CLIENT,
                ca_certs_file=tls.ca_certs_file,
                sni=ep.host,
            )
        return ldap3.Server(
            ep.host,
            port=ep.port,
            use_ssl=ep.use_ssl,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=self.config.connect_timeout_seconds,
        )

    def open(self) -> ldap3.Connection:
        """A bound connection, or DirectoryError naming every URL that failed and why."""
        with self._lock:
            start = self._preferred
        order = self._endpoints[start:] + self._endpoints[:start]
        failures: list[str] = []
        last: DirectoryError | None = None
        for ep in order:
            try:
                conn = self._open_one(ep)
            except DirectoryError as exc:
                failures.append(f"{ep.url}: {exc}")
                last = exc
                continue
            with self._lock:
                self._preferred = self._endpoints.index(ep)
            return conn
        kind = last.kind if last is not None else "connect"
        raise DirectoryError(kind, "; ".join(failures))

    def _open_one(self, ep: Endpoint) -> ldap3.Connection:
        conn = ldap3.Connection(
            self._server(ep),
            user=self.config.bind_dn,
            password=self._password,
            auto_bind=ldap3.AUTO_BIND_NONE,
            client_strategy=ldap3.SYNC,
            auto_referrals=False,
            auto_range=False,
            raise_exceptions=False,
            read_only=True,
            receive_timeout=math.ceil(self.config.timeout_seconds),
            return_empty_attributes=False,
        )
        try:
            conn.open(read_server_info=False)
            if self.config.tls == "starttls" and not conn.start_tls(read_server_info=False):
                raise DirectoryError("tls", f"StartTLS refused: {conn.result}")
            if not conn.bind():
                raise _bind_failure(conn.result or {}, self.config.bind_dn)
        except DirectoryError:
            close_quietly(conn)
            raise
        except LDAPException as exc:
            close_quietly(conn)
            kind = "timeout" if "timed out" in str(exc).lower() else "connect"
            if isinstance(exc.__context__, ssl.SSLError) or "certificate" in str(exc).lower():
                kind = "tls"
            raise DirectoryError(kind, f"{type(exc).__name__}: {exc}") from None
        except (OSError, ssl.SSLError) as exc:
            close_quietly(conn)
            raise DirectoryError("connect", f"{type(exc).__name__}: {exc}") from None
        return conn


def close_quietly(conn: ldap3.Connection) -> None:
    """Unbind, ignoring a connection that is already broken."""
    with contextlib.suppress(Exception):
        conn.unbind()
