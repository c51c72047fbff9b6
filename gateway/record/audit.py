"""The audit log: one JSON line per request, written without blocking the event loop much."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from json.encoder import encode_basestring_ascii  # the C implementation
from typing import IO

from gateway.flow import Flow, Outcome
from gateway.http.target import redacted

FLUSH_INTERVAL = 0.2
MAX_BUFFERED_LINES = 256  # written at once when that many wait (bounds each write: ~100 KB)
_ENCODER = json.JSONEncoder(separators=(",", ":"))
MAX_CACHED_IDENTITIES = 4096
MAX_CACHED_PATHS = 4096
MAX_CACHED_PATH_BYTES = 512
_THOUSANDTHS = tuple(f"{n:03d}" for n in range(1000))  # "000" … "999"
# by member name: an `Outcome` hashes through Python code (`Enum.__hash__`), a str does not
_DECISIONS = {outcome.name: encode_basestring_ascii(outcome.value) for outcome in Outcome}


def _string(value: str | None) -> str:
    """A JSON string (ASCII, escaped) or null."""
    return "null" if value is None else encode_basestring_ascii(value)


class AuditLog:
    """Buffers lines; a line is on disk at most `FLUSH_INTERVAL` seconds after its request
    ended (a timer writes the buffered lines with one call), or sooner once
    `MAX_BUFFERED_LINES` wait; everything is written at close."""

    def __init__(self, destination: str) -> None:
        self._own = destination not in ("-", "")
        self._out: IO[str] = (
            open(destination, "a", encoding="utf-8", buffering=1 << 16)  # noqa: SIM115
            if self._own
            else sys.stdout
        )
        self._flush_pending: asyncio.TimerHandle | None = None
        self._lines: list[str] = []
        self._methods: dict[bytes, str] = {}
        self._paths: dict[bytes, str] = {}
        self._who_cache: dict[tuple, tuple[object, object, str]] = {}
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        """UTC time to the second, formatted once per second."""
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return self._stamp

    def write(self, flow: Flow, elapsed: float | None = None) -> None:
        """Buffer the audit line of a finished exchange (`elapsed`: seconds since it
        started, if the caller has measured it already)."""
        exchange = flow.exchange
        if elapsed is None:
            elapsed = time.monotonic() - exchange.started
        path = self._path(flow.target or exchange.target)
        method = self._methods.get(exchange.method)
        if method is None:
            method = _string(exchange.method[:64].decode("latin-1"))
            if len(self._methods) < 64:
                self._methods[exchange.method] = method
        optional = ""
        if flow.source != exchange.conn.peer:
            optional += f',"via":{_string(exchange.conn.peer)}'
        directory = flow.membership
        if directory is not None:
            optional += f',"directory_user":{_string(directory.dn)}'
        if flow.stream is not None:
            optional += self._stream(flow)
        reason = flow.reason
        # milliseconds to three places from whole microseconds: no format spec (compiled,
        # an f-string with one runs str.format over the whole template) and no float
        # formatting (`format(x, ".3f")`), both dearer than two integer conversions
        micros = int(max(elapsed, 0.0) * 1_000_000 + 0.5)
        lines = self._lines
        lines.append(
            f'{{"time":"{self._timestamp()}","request_id":"{exchange.request_id.decode()}",'
            f"{self._who(flow)},"
            f'"decision":{_DECISIONS[flow.outcome._name_]},'
            f'"reason":{encode_basestring_ascii(reason) if reason else "null"},'
            f'"method":{method},"path":{path},'
            f'"status":{exchange.status},"bytes":{exchange.bytes_out},'
            f'"duration_ms":{micros // 1000}.{_THOUSANDTHS[micros % 1000]}{optional}}}\n'
        )
        if len(lines) >= MAX_BUFFERED_LINES:
            self._write_lines()
            self._out.flush()
        if self._flush_pending is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush()
                return
            self._flush_pending = loop.call_later(FLUSH_INTERVAL, self._flush)

    @staticmethod
    def _stream(flow: Flow) -> str:
        """exec/attach/port-forward: the recorded session's id, and the transports when the
        gateway bridged them."""
        stream = flow.stream
        assert stream is not None
        out = ""
        if flow.recording is not None:
            out += f',"session":{_string(flow.recording.session_id)}'
        if stream.bridged:
            out += f',"bridged":{_string(stream.request.client + "->" + stream.attempt)}'
        return out

    def _path(self, target: bytes) -> str:
        """The target as a JSON string, credential-bearing query parameters redacted
        (remembered: clients repeat their request targets)."""
        path = self._paths.get(target)
        if path is None:
            path = _string(redacted(target)[:2048].decode("latin-1"))
            if len(target) <= MAX_CACHED_PATH_BYTES:
                if len(self._paths) >= MAX_CACHED_PATHS:
                    self._paths.clear()
                self._paths[target] = path
        return path

    def _write_lines(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            self._out.write("".join(lines))

    def _who(self, flow: Flow) -> str:
        """Who asked and where: the source, the tenant and the identity part of an audit
        line (user … granted_by), serialized once per (identity, grant, source, tenant):
        identity and grant are immutable and reused across requests."""
        ident, grant, source, tenant = flow.identity, flow.grant, flow.source, flow.tenant
        # by the identity's fields the line shows: a user's next token is a new `Identity`
        # (the policy engine hands out the same `Grant` for it)
        key = (
            (ident.username, ident.uid, ident.issuer) if ident else None,
            id(grant),
            source,
            tenant,
        )
        hit = self._who_cache.get(key)
        if hit is not None and hit[1] is grant:
            return hit[2]
        who: dict = {
            "user": ident.username if ident else None,
            "uid": ident.uid if ident else None,
            "issuer": ident.issuer if ident else None,
            "groups": list(grant.groups) if grant else [],
            "roles": list(grant.roles) if grant else [],
        }
        if grant:
            who["groups_dropped"] = grant.dropped_groups
        if grant and grant.reasons:
            who["granted_by"] = list(grant.reasons)
        if grant and grant.directory_groups:
            who["directory_groups"] = [
                {"role": role, "group": group} for role, group in grant.directory_groups
            ]
        text = (
            f'"source":{_string(source)},"tenant":{_string(tenant)},' + _ENCODER.encode(who)[1:-1]
        )
        if len(self._who_cache) >= MAX_CACHED_IDENTITIES:
            self._who_cache.clear()
        self._who_cache[key] = (ident, grant, text)
        return text

    def _flush(self) -> None:
        self._flush_pending = None
        self._write_lines()
        self._out.flush()

    def close(self) -> None:
        if self._flush_pending is not None:
            self._flush_pending.cancel()
            self._flush_pending = None
        self._write_lines()
        self._out.flush()
        if self._own:
            self._out.close()
