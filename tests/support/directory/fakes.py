"""Fault-injecting stand-ins below the real LDAP code: an ldap3-like connection that
behaves like a real AD (1000-entry size limit without paging, ranged `member`/`memberOf`
values) and a directory source whose failures and delays the test controls."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gateway.config.model import LDAP
from gateway.directory.entry import DirectoryGroup, Membership, membership, not_found
from gateway.directory.errors import DirectoryError
from gateway.directory.search import PAGED_RESULTS

BASE = "DC=corp,DC=example,DC=com"


def ldap_config(tmp: Path | None = None, **overrides) -> LDAP:
    fields = dict(
        urls=["ldap://127.0.0.1"],
        tls="none",
        bind_dn=f"CN=svc,{BASE}",
        bind_password_file=Path("/nonexistent"),
        user_base_dn=BASE,
        group_base_dn=BASE,
        cache_ttl_seconds=10,
        max_staleness_seconds=60,
        negative_ttl_seconds=2,
        retry_interval_seconds=1,
        flush_file=(tmp or Path("/nonexistent")) / "flush",
    )
    fields.update(overrides)
    return LDAP(**fields)


class SizeLimitedConnection:
    """Answers searches from a list of entries like AD: more than `size_limit` entries
    without the paged-results control is error 4 (sizeLimitExceeded); ranged attributes are
    served `max_values` at a time."""

    def __init__(
        self,
        entries: dict[str, dict[str, list[bytes]]],
        *,
        size_limit: int = 1000,
        max_values: int = 1500,
    ) -> None:
        self.entries = entries
        self.size_limit = size_limit
        self.max_values = max_values
        self.closed = False
        self.response: list[dict] = []
        self.result: dict = {}
        self.searches: list[tuple[str, str, list[str]]] = []

    def search(
        self,
        base,
        search_filter,
        search_scope=None,
        attributes=None,
        paged_size=None,
        paged_cookie=None,
        **_kw,
    ) -> bool:
        self.searches.append((base, search_filter, list(attributes or [])))
        if search_scope == "BASE":
            raw = self.entries.get(base)
            if raw is None:
                self.response, self.result = [], {"result": 32, "description": "noSuchObject"}
                return False
            self.response = [
                {
                    "type": "searchResEntry",
                    "dn": base,
                    "raw_attributes": self._ranged(raw, attributes or []),
                }
            ]
            self.result = {"result": 0}
            return True
        matches = [dn for dn in self.entries if dn != "user"]
        start = int(paged_cookie or 0)
        if paged_size is None and len(matches) > self.size_limit:
            self.response = [
                {"type": "searchResEntry", "dn": dn, "raw_attributes": {}}
                for dn in matches[: self.size_limit]
            ]
            self.result = {"result": 4, "description": "sizeLimitExceeded"}
            return False
        page = matches[start : start + (paged_size or len(matches))]
        nxt = start + len(page)
        cookie = str(nxt).encode() if nxt < len(matches) else b""
        self.response = [
            {"type": "searchResEntry", "dn": dn, "raw_attributes": self.entries[dn]} for dn in page
        ]
        self.response.append({"type": "searchResRef", "uri": ["ldap://elsewhere/"]})
        self.result = {"result": 0, "controls": {PAGED_RESULTS: {"value": {"cookie": cookie}}}}
        return True

    def _ranged(self, raw: dict[str, list[bytes]], attributes: list[str]) -> dict:
        out = {}
        for want in attributes:
            name, _, rng = want.partition(";range=")
            values = raw.get(name, [])
            lo = int(rng.split("-")[0]) if rng else 0
            if len(values) > self.max_values or rng:
                chunk = values[lo : lo + self.max_values]
                hi = lo + len(chunk) - 1
                end = "*" if lo + len(chunk) >= len(values) else str(hi)
                out[f"{name};range={lo}-{end}"] = chunk
            elif values:
                out[name] = values
        return out


class FakeSource:
    """A directory answering from a dict, with injectable failure and delay."""

    def __init__(self, users: dict[str, list[str]]) -> None:
        self.users = users
        self.calls = 0
        self.fail: DirectoryError | None = None
        self.fail_for: dict[str, DirectoryError] = {}  # one user's lookup fails
        self.delay = 0.0
        self.lock = threading.Lock()

    def lookup(self, value: str) -> Membership:
        with self.lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if value in self.fail_for:
            raise self.fail_for[value]
        groups = self.users.get(value)
        if groups is None:
            return not_found(value)
        return membership(
            value,
            dn=f"CN={value},{BASE}",
            sid="S-1-5-21-1-2-3-1000",
            guid=None,
            disabled=False,
            locked=False,
            method="fake",
            groups=[
                DirectoryGroup(f"S-1-5-21-1-2-3-{2000 + i}", f"CN={g},OU=Groups,{BASE}", g)
                for i, g in enumerate(groups)
            ],
        )

    def check(self) -> None:
        if self.fail is not None:
            raise self.fail

    def close(self) -> None:
        pass
