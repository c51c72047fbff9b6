"""Step 1 of the request path: which tenant does a request address, and what path goes on?

Two ways to name a tenant, both active at once:

* hostname: ``Host: <tenant>.<base_domain>`` (port ignored) — the path is forwarded as is;
* path prefix: ``/<prefix>/<tenant>/<rest>`` on any host — ``/<rest>`` plus the query
  string is forwarded byte for byte.

Paths are never decoded. Anything that could make two parsers disagree about which tenant
is meant (dot segments, encoded dots or slashes in the tenant part, empty segments,
backslashes, control bytes) is refused before a tenant is chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_TENANT = re.compile(rb"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_BAD_PATH = re.compile(rb"(?:^|/)(?:\.|%2e){1,2}(?:/|$)|//|\\|%2e%2e|%00|[\x00-\x20\x7f]", re.I)
# a path of non-empty segments made only of bytes _BAD_PATH cannot match on its own (no
# '.', '%', '\\', control bytes or space) cannot match it at all: one match call accepts
# the common case, anything else gets the full search
_PLAIN_PATH = re.compile(rb"(?:/[^/.%\\\x00-\x20\x7f]+)*/?")
MAX_REMEMBERED_NAMES = 4096
MAX_REMEMBERED_TARGETS = 4096
MAX_REMEMBERED_TARGET_BYTES = 512


def _bad_path(path: bytes) -> bool:
    if _PLAIN_PATH.fullmatch(path) is not None:
        return False
    return _BAD_PATH.search(path) is not None


class Route(NamedTuple):
    """A request addressed to `tenant`; `target` is the raw path+query to send upstream.
    (A named tuple: built on every request, and cheaper to build than a frozen dataclass.)"""

    tenant: str
    target: bytes
    by: str  # "host" or "path"


@dataclass(frozen=True, slots=True)
class Refused:
    """The request target is malformed or tricky; answer `code` with `message`.
    `names_no_tenant`: the target addresses no tenant that could exist — said only to an
    authenticated caller, so that nobody learns from the answer which tenants exist."""

    code: int
    message: str
    names_no_tenant: bool = False


_NO_TENANT = Refused(404, "no such tenant", names_no_tenant=True)


class Router:
    def __init__(self, base_domain: str | None, path_prefix: str | None) -> None:
        self._suffix = ("." + base_domain).encode() if base_domain else None
        self._prefix = (path_prefix.rstrip("/") + "/").encode() if path_prefix else None
        self._names: dict[bytes, str] = {}  # tenant names seen in paths that passed _TENANT
        # answers by request target (and Host, with a base domain): clients repeat their
        # targets (a controller lists and watches the same few paths), and an answer is a
        # pure function of them; immutable, so one object serves every repeat
        self._answers: dict[object, Route | Refused | None] = {}

    def route(self, host: bytes | None, target: bytes) -> Route | Refused | None:
        """Route a request; None means "not addressed to a tenant" (the gateway's own pages)."""
        key = target if self._suffix is None else (host, target)
        try:
            return self._answers[key]
        except KeyError:
            pass
        answer = self._route(host, target)
        if len(target) <= MAX_REMEMBERED_TARGET_BYTES and (host is None or len(host) <= 255):
            if len(self._answers) >= MAX_REMEMBERED_TARGETS:
                self._answers.clear()
            self._answers[key] = answer
        return answer

    def _route(self, host: bytes | None, target: bytes) -> Route | Refused | None:
        if not target.startswith(b"/"):
            return Refused(400, "request target must be an absolute path")
        path, sep, query = target.partition(b"?")
        if _bad_path(path):
            return Refused(400, "request path has empty, dot or encoded-dot segments")
        tenant = self._tenant_from_host(host) if self._suffix and host else None
        if tenant is not None:
            return Route(tenant, target, "host") if tenant else _NO_TENANT
        if self._prefix and path.startswith(self._prefix):
            start = len(self._prefix)
            end = path.find(b"/", start)
            name = path[start:] if end < 0 else path[start:end]
            tenant = self._names.get(name)
            if tenant is None:
                if not _TENANT.fullmatch(name):
                    return _NO_TENANT
                if len(self._names) >= MAX_REMEMBERED_NAMES:
                    self._names.clear()
                tenant = self._names[name] = name.decode()
            # the rest of the target, byte for byte (path after the name, query)
            return Route(tenant, target[end:] if end >= 0 else b"/" + sep + query, "path")
        if self._prefix and path == self._prefix.rstrip(b"/"):
            return _NO_TENANT
        return None

    def _tenant_from_host(self, host: bytes) -> str | None:
        """The tenant label of `host`, "" for a malformed name under the base domain, else None."""
        host = host.strip().lower()
        if host.startswith(b"["):  # IPv6 literal: never a tenant name
            return None
        host = host.rpartition(b":")[0] if b":" in host else host
        host = host.rstrip(b".")
        assert self._suffix is not None
        if not host.endswith(self._suffix):
            return None
        label = host[: -len(self._suffix)]
        return label.decode() if _TENANT.fullmatch(label) else ""
