"""Searches that survive a real Active Directory: paged (the server's 1000-entry size limit
applies per page, not per search), referrals ignored, ranged attribute values
(`member;range=0-1499`) fetched to the end."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import ldap3

from gateway.directory.errors import DirectoryError

PAGED_RESULTS = "1.2.840.113556.1.4.319"
_RANGE = re.compile(r"^(?P<attr>[^;]+);range=(?P<lo>\d+)-(?P<hi>\d+|\*)$", re.IGNORECASE)
_EMPTY_OK = {0, 32}  # success, noSuchObject
MAX_RANGE_ROUNDS = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    dn: str
    raw: dict[str, list[bytes]]

    def first(self, attr: str) -> bytes | None:
        values = self.values(attr)
        return values[0] if values else None

    def text(self, attr: str) -> str | None:
        value = self.first(attr)
        return value.decode("utf-8", "replace") if value is not None else None

    def number(self, attr: str) -> int | None:
        value = self.text(attr)
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    def values(self, attr: str) -> list[bytes]:
        wanted = attr.lower()
        for name, values in self.raw.items():
            if name.lower() == wanted:
                return list(values)
        return []


def _check(conn: ldap3.Connection, what: str) -> int:
    result = conn.result or {}
    code = result.get("result", 0)
    if code not in _EMPTY_OK:
        desc = result.get("description", "error")
        kind = "size_limit" if code == 4 else ("timeout" if code in (3, 85) else "search")
        raise DirectoryError(kind, f"{what}: {desc} ({result.get('message', '')})".strip())
    return code


def _entries(conn: ldap3.Connection) -> list[Entry]:
    return [
        Entry(item["dn"], dict(item.get("raw_attributes") or {}))
        for item in (conn.response or [])
        if item.get("type") == "searchResEntry"  # searchResRef (referrals) are skipped
    ]


def paged_search(
    conn: ldap3.Connection,
    base: str,
    search_filter: str,
    attributes: list[str],
    *,
    page_size: int,
    limit: int,
    scope: Literal["BASE", "LEVEL", "SUBTREE"] = "SUBTREE",
) -> list[Entry]:
    """Every matching entry, page by page; DirectoryError past `limit` entries."""
    found: list[Entry] = []
    cookie: bytes | None = None
    while True:
        ok = conn.search(
            base,
            search_filter,
            search_scope=scope,
            attributes=attributes,
            paged_size=page_size,
            paged_cookie=cookie,
        )
        if conn.closed:
            raise DirectoryError("connect", "connection lost during search")
        code = _check(conn, f"search under {base}")
        if not ok and code == 32:
            return found
        found.extend(_entries(conn))
        if len(found) > limit:
            raise DirectoryError("too_many", f"more than {limit} entries for {search_filter[:80]}")
        control = ((conn.result or {}).get("controls") or {}).get(PAGED_RESULTS) or {}
        cookie = (control.get("value") or {}).get("cookie")
        if not cookie:
            return found


def read_entry(conn: ldap3.Connection, dn: str, attributes: list[str]) -> Entry | None:
    """One entry by DN (base scope: AD returns constructed attributes like tokenGroups
    only there)."""
    conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=attributes)
    if conn.closed:
        raise DirectoryError("connect", "connection lost during search")
    if _check(conn, f"read {dn}") == 32:
        return None
    entries = _entries(conn)
    return entries[0] if entries else None


def all_values(conn: ldap3.Connection, entry: Entry, attr: str, *, limit: int) -> list[bytes]:
    """Every value of a multi-valued attribute, following AD's ranged retrieval: when the
    entry holds `attr;range=0-1499`, ask for `attr;range=1500-*` and so on until `*`. More
    than `limit` values, ranged or not (tokenGroups comes whole), is `too_many`."""
    values = entry.values(attr)
    ranged = _ranged(entry, attr)
    rounds = 0
    if len(values) > limit:
        raise DirectoryError("too_many", f"{attr} of {entry.dn} has more than {limit} values")
    while ranged is not None:
        got, hi = ranged
        values.extend(got)
        if len(values) > limit:
            raise DirectoryError("too_many", f"{attr} of {entry.dn} has more than {limit} values")
        if hi == "*":
            break
        rounds += 1
        if rounds > MAX_RANGE_ROUNDS:
            raise DirectoryError("search", f"ranged retrieval of {attr} did not end")
        nxt = read_entry(conn, entry.dn, [f"{attr};range={int(hi) + 1}-*"])
        if nxt is None:
            break
        ranged = _ranged(nxt, attr)
    return values


def _ranged(entry: Entry, attr: str) -> tuple[list[bytes], str] | None:
    for name, vals in entry.raw.items():
        match = _RANGE.match(name)
        if match and match["attr"].lower() == attr.lower():
            return list(vals), match["hi"]
    return None
