"""One user's entry and groups, read over a bound ldap3 connection (synchronous: callers
run it in a worker thread)."""

from __future__ import annotations

import logging
import uuid
from collections import deque

import ldap3

from gateway.config.model import LDAP
from gateway.directory import filters
from gateway.directory.entry import DirectoryGroup, Membership, membership, not_found
from gateway.directory.errors import DirectoryError
from gateway.directory.search import Entry, all_values, paged_search, read_entry
from gateway.names.dn import first_value, normalize_dn
from gateway.names.sid import SidError, domain_sid, sid_to_bytes, sid_to_str

log = logging.getLogger("vgate.directory")

IN_CHAIN = "1.2.840.113556.1.4.1941"
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
SID_BATCH = 100
MAX_LOOKUP_CHARS = 256
_USER_ATTRS = ["objectSid", "objectGUID", "userAccountControl", "lockoutTime", "primaryGroupID"]
_GROUP_ATTRS = ["objectSid", "sAMAccountName", "cn"]


def _group(entry: Entry, via: tuple[str, ...] = ()) -> DirectoryGroup | None:
    raw = entry.first("objectSid")
    try:
        sid = sid_to_str(raw) if raw else None
    except SidError:
        sid = None
    if sid is None:
        return None
    name = entry.text("sAMAccountName") or entry.text("cn") or first_value(entry.dn)
    return DirectoryGroup(sid=sid, dn=entry.dn, name=name, via=via)


class Lookup:
    """The queries for one user: find the entry, check it is usable, list its groups."""

    def __init__(self, config: LDAP) -> None:
        self.config = config

    def user_filter(self, value: str) -> str:
        return (
            "(&(objectCategory=person)(objectClass=user)"
            + filters.equals(self.config.user_attribute, value)
            + ")"
        )

    def run(self, conn: ldap3.Connection, value: str, *, chains: bool = False) -> Membership:
        cfg = self.config
        if not value or len(value) > MAX_LOOKUP_CHARS:
            return not_found(value[:MAX_LOOKUP_CHARS])
        try:
            found = paged_search(
                conn,
                cfg.user_base_dn,
                self.user_filter(value),
                ["objectSid"],
                page_size=cfg.page_size,
                limit=2,
            )
        except DirectoryError as exc:  # more than 2 match: "not found", like 2
            if exc.kind != "too_many":
                raise
            log.warning(
                "directory: several entries match %s=%r; refusing to pick one",
                cfg.user_attribute,
                value,
            )
            return not_found(value)
        if len(found) != 1:
            if found:
                log.warning(
                    "directory: %d entries match %s=%r; refusing to pick one",
                    len(found),
                    cfg.user_attribute,
                    value,
                )
            return not_found(value)
        user_dn = found[0].dn
        attrs = [*_USER_ATTRS, "msDS-User-Account-Control-Computed"]
        if cfg.nested and cfg.token_groups:
            attrs.append("tokenGroups")
        if not cfg.nested or chains:
            attrs.append("memberOf")
        user = read_entry(conn, user_dn, attrs)
        if user is None:
            return not_found(value)
        uac = user.number("userAccountControl") or 0
        computed = user.number("msDS-User-Account-Control-Computed")
        disabled = bool(uac & UF_ACCOUNTDISABLE)
        if computed is not None:
            locked = bool(computed & UF_LOCKOUT)
        else:
            locked = (user.number("lockoutTime") or 0) > 0
        raw_sid = user.first("objectSid")
        sid = sid_to_str(raw_sid) if raw_sid else None
        raw_guid = user.first("objectGUID")
        guid = str(uuid.UUID(bytes_le=raw_guid)) if raw_guid and len(raw_guid) == 16 else None
        groups: list[DirectoryGroup] = []
        method = "none"
        if not (disabled or locked):
            groups, method = self._groups(conn, user, sid)
            if chains:
                groups = self._with_chains(conn, user, sid, groups)
        return membership(
            value,
            dn=user.dn,
            sid=sid,
            guid=guid,
            disabled=disabled,
            locked=locked,
            groups=groups,
            method=method,
        )

    # -- groups -------------------------------------------------------------------------

    def _groups(
        self, conn: ldap3.Connection, user: Entry, sid: str | None
    ) -> tuple[list[DirectoryGroup], str]:
        cfg = self.config
        primary = self._primary_sid(user, sid)
        if cfg.nested and cfg.token_groups:
            token_groups = all_values(conn, user, "tokenGroups", limit=cfg.max_groups)
            if token_groups:
                sids = []
                for raw in token_groups:
                    try:
                        sids.append(sid_to_str(raw))
                    except SidError:
                        continue
                return self.resolve_sids(conn, sids), "tokenGroups"
            log.info(
                "directory: no tokenGroups on %s (not allowed?); using the in-chain rule", user.dn
            )
        primary_group = self.resolve_sids(conn, [primary])[0] if primary else None
        if cfg.nested:
            groups = self._in_chain(conn, user.dn)
            if primary_group is not None and primary_group.dn:
                groups += self._in_chain(conn, primary_group.dn)
            method = "in-chain"
        else:
            dns = [
                v.decode("utf-8", "replace")
                for v in all_values(conn, user, "memberOf", limit=cfg.max_groups)
            ]
            groups = self.resolve_dns(conn, dns)
            method = "memberOf"
        if primary_group is not None:
            groups.insert(0, primary_group)
        return _unique(groups, cfg.max_groups), method

    def _primary_sid(self, user: Entry, sid: str | None) -> str | None:
        rid = user.number("primaryGroupID")
        return f"{domain_sid(sid)}-{rid}" if sid and rid else None

    def _in_chain(self, conn: ldap3.Connection, dn: str) -> list[DirectoryGroup]:
        cfg = self.config
        search_filter = f"(&(objectClass=group)(member:{IN_CHAIN}:={filters.escape_value(dn)}))"
        entries = paged_search(
            conn,
            cfg.group_base_dn,
            search_filter,
            _GROUP_ATTRS,
            page_size=cfg.page_size,
            limit=cfg.max_groups,
        )
        return [g for g in (_group(e) for e in entries) if g is not None]

    def resolve_sids(self, conn: ldap3.Connection, sids: list[str]) -> list[DirectoryGroup]:
        """Groups for SIDs, looked up in batches; SIDs that do not resolve under the group
        base are kept by SID (policies may still name them)."""
        cfg = self.config
        found: dict[str, DirectoryGroup] = {}
        for i in range(0, len(sids), SID_BATCH):
            batch = [sid_to_bytes(s) for s in sids[i : i + SID_BATCH]]
            search_filter = "(&(objectClass=group)" + filters.any_of("objectSid", batch) + ")"
            for entry in paged_search(
                conn,
                cfg.group_base_dn,
                search_filter,
                _GROUP_ATTRS,
                page_size=cfg.page_size,
                limit=cfg.max_groups,
            ):
                group = _group(entry)
                if group is not None:
                    found[group.sid] = group
        return [found.get(s) or DirectoryGroup(sid=s, dn=None, name=s) for s in sids]

    def resolve_dns(self, conn: ldap3.Connection, dns: list[str]) -> list[DirectoryGroup]:
        """Groups for DNs (direct `memberOf` values), in batches."""
        cfg = self.config
        out: list[DirectoryGroup] = []
        for i in range(0, len(dns), SID_BATCH):
            search_filter = (
                "(&(objectClass=group)"
                + filters.any_of("distinguishedName", dns[i : i + SID_BATCH])
                + ")"
            )
            entries = paged_search(
                conn,
                cfg.group_base_dn,
                search_filter,
                _GROUP_ATTRS,
                page_size=cfg.page_size,
                limit=cfg.max_groups,
            )
            out += [g for g in (_group(e) for e in entries) if g is not None]
        return out

    # -- explain ------------------------------------------------------------------------

    def _with_chains(
        self, conn: ldap3.Connection, user: Entry, sid: str | None, groups: list[DirectoryGroup]
    ) -> list[DirectoryGroup]:
        """Attach to each group the memberOf path that leads to it (breadth first, so the
        shortest chain; cycles end where a group was already seen)."""
        cfg = self.config
        via: dict[str, tuple[str, ...]] = {}
        queue: deque[tuple[str, tuple[str, ...]]] = deque()
        for raw in all_values(conn, user, "memberOf", limit=cfg.max_groups):
            queue.append((raw.decode("utf-8", "replace"), ()))
        primary = self._primary_sid(user, sid)
        if primary:
            for group in self.resolve_sids(conn, [primary]):
                if group.dn:
                    queue.append((group.dn, ("primary group",)))
        while queue and len(via) < cfg.max_groups:
            dn, path = queue.popleft()
            key = normalize_dn(dn)
            if key in via:
                continue
            via[key] = path
            entry = read_entry(conn, dn, ["memberOf"])
            if entry is None:
                continue
            for raw in all_values(conn, entry, "memberOf", limit=cfg.max_groups):
                queue.append((raw.decode("utf-8", "replace"), (*path, dn)))
        out = []
        for group in groups:
            chain = via.get(normalize_dn(group.dn)) if group.dn else None
            out.append(
                DirectoryGroup(
                    group.sid, group.dn, group.name, chain if chain is not None else ("?",)
                )
            )
        return out


def _unique(groups: list[DirectoryGroup], limit: int) -> list[DirectoryGroup]:
    seen: set[str] = set()
    out = []
    for group in groups:
        if group.sid not in seen:
            seen.add(group.sid)
            out.append(group)
    if len(out) > limit:
        raise DirectoryError("too_many", f"more than {limit} groups")
    return out
