"""`kubectl --as`: a caller's own `Impersonate-*` request, checked by the tenant's API server.

The gateway already impersonates the caller (their `Grant`). When the caller also asks to
act as someone else, every requested attribute (user or service account, uid, each group,
each extra value) is put to the tenant's API server as a `SubjectAccessReview` for the
caller's granted identity — the same `impersonate` checks kube-apiserver would make. Only if
all are allowed does the request leave as the requested identity, with the caller recorded in
the extra `vgate.io/original-user`. Decisions are cached briefly per (grant, request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import unquote

import httpx
from cachetools import TTLCache

from gateway.identity import Deny, Grant
from gateway.registry import Upstream
from gateway.tenant_api import TenantApi

ORIGINAL_USER_EXTRA = "vgate.io/original-user"
RESERVED_EXTRA_PREFIX = "vgate.io/"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
MAX_VALUES = 64
MAX_VALUE_BYTES = 1024

Headers = list[tuple[bytes, bytes]]


class BadImpersonation(ValueError):
    """The `Impersonate-*` headers are malformed (400)."""


class ReviewUnavailable(RuntimeError):
    """The tenant's API server could not answer the SubjectAccessReview (503)."""


@dataclass(frozen=True, slots=True)
class Requested:
    """What the caller asked to be, from their `Impersonate-*` headers."""

    user: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...]


def _text(value: bytes, what: str) -> str:
    try:
        text = value.decode("ascii").strip()
    except UnicodeDecodeError:
        raise BadImpersonation(f"{what} is not ASCII") from None
    if not text or not text.isprintable() or len(text) > MAX_VALUE_BYTES:
        raise BadImpersonation(f"{what} is empty, too long or has control characters")
    return text


def requested_identity(headers: Headers) -> Requested:
    """Parse the client's `Impersonate-*` headers as kube-apiserver does."""
    users: list[str] = []
    uids: list[str] = []
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    count = 0
    for name, value in headers:
        lower = name.lower()
        if not lower.startswith(b"impersonate-"):
            continue
        count += 1
        if count > MAX_VALUES:
            raise BadImpersonation(f"more than {MAX_VALUES} Impersonate-* headers")
        if lower == b"impersonate-user":
            users.append(_text(value, "Impersonate-User"))
        elif lower == b"impersonate-uid":
            uids.append(_text(value, "Impersonate-Uid"))
        elif lower == b"impersonate-group":
            groups.append(_text(value, "Impersonate-Group"))
        elif lower.startswith(b"impersonate-extra-"):
            key = unquote(_text(lower[len(b"impersonate-extra-") :], "extra key"))
            if not key or not key.isprintable():
                raise BadImpersonation("an Impersonate-Extra key is empty or not printable")
            extra.setdefault(key, []).append(_text(value, f"extra {key}"))
        else:
            raise BadImpersonation(f"unknown impersonation header {name.decode('latin-1')}")
    if len(users) != 1:
        if not users:
            raise BadImpersonation("requested groups, uid or extras without impersonating a user")
        raise BadImpersonation("only one Impersonate-User may be given")
    if len(uids) > 1:
        raise BadImpersonation("only one Impersonate-Uid may be given")
    return Requested(
        users[0],
        uids[0] if uids else "",
        tuple(groups),
        tuple((k, tuple(v)) for k, v in sorted(extra.items())),
    )


def _checks(req: Requested) -> list[dict]:
    """The resource attributes kube-apiserver's impersonation filter authorizes."""
    out: list[dict] = []
    if req.user.startswith(SERVICE_ACCOUNT_PREFIX) and req.user.count(":") == 3:
        namespace, _, name = req.user[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        out.append(
            {
                "verb": "impersonate",
                "group": "",
                "resource": "serviceaccounts",
                "namespace": namespace,
                "name": name,
            }
        )
    else:
        out.append({"verb": "impersonate", "group": "", "resource": "users", "name": req.user})
    if req.uid:
        out.append(
            {
                "verb": "impersonate",
                "group": "authentication.k8s.io",
                "resource": "uids",
                "name": req.uid,
            }
        )
    out.extend(
        {"verb": "impersonate", "group": "", "resource": "groups", "name": g} for g in req.groups
    )
    for key, values in req.extra:
        out.extend(
            {
                "verb": "impersonate",
                "group": "authentication.k8s.io",
                "resource": "userextras",
                "subresource": key,
                "name": v,
            }
            for v in values
        )
    return out


class NestedImpersonation:
    """Answers "may this grant act as that requested identity in this tenant?"."""

    def __init__(
        self, *, cache_seconds: float = 10.0, timeout: float = 5.0, api: TenantApi | None = None
    ) -> None:
        self._decisions: TTLCache = TTLCache(
            maxsize=10_000, ttl=cache_seconds, timer=time.monotonic
        )
        self.api = api or TenantApi(timeout=timeout)

    def forget(self, tenant: str) -> None:
        """The tenant's route changed: its client and decisions must not be reused."""
        self.api.forget(tenant)
        for key in [k for k in self._decisions if k[0] == tenant]:
            self._decisions.pop(key, None)

    async def close(self) -> None:
        await self.api.close()

    async def decide(self, upstream: Upstream, grant: Grant, req: Requested) -> Grant | Deny:
        """The grant to forward with, or why not. Raises `ReviewUnavailable` when the
        tenant could not answer, `CredentialRefused` when it refuses the gateway's review."""
        for key, _ in req.extra:
            if key.startswith(RESERVED_EXTRA_PREFIX):
                return Deny(grant.tenant, f"extra {key!r} is reserved for the gateway")
        cache_key = (upstream.name, grant, req)
        denied = self._decisions.get(cache_key)
        if denied is None:
            denied = ""
            for attributes in _checks(req):
                if not await self._allowed(upstream, grant, attributes):
                    what = attributes.get("subresource") or attributes["resource"]
                    denied = f'{what} "{attributes["name"]}"'
                    break
            self._decisions[cache_key] = denied
        if denied:
            return Deny(
                grant.tenant, f'user "{grant.user}" cannot impersonate {denied} in this cluster'
            )
        own_extra = tuple((k, v) for k, v in grant.extra if k.startswith(RESERVED_EXTRA_PREFIX))
        return Grant(
            tenant=grant.tenant,
            user=req.user,
            uid=req.uid,
            groups=req.groups,
            roles=grant.roles,
            extra=(*req.extra, *own_extra, (ORIGINAL_USER_EXTRA, (grant.user,))),
            reasons=(*grant.reasons, f"impersonating {req.user} (SubjectAccessReview allowed)"),
        )

    async def _allowed(self, upstream: Upstream, grant: Grant, attributes: dict) -> bool:
        spec = {
            "user": grant.user,
            "uid": grant.uid,
            "groups": list(grant.groups),
            "extra": {k: list(v) for k, v in grant.extra},
            "resourceAttributes": attributes,
        }
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        try:
            r = await self.api.call(
                upstream,
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                body,
                needs="create authorization.k8s.io/subjectaccessreviews",
            )
        except httpx.HTTPError as exc:
            raise ReviewUnavailable(f"SubjectAccessReview failed: {type(exc).__name__}") from None
        if r.status_code != 201 and r.status_code != 200:
            raise ReviewUnavailable(f"SubjectAccessReview answered HTTP {r.status_code}")
        try:
            status = r.json().get("status") or {}
        except ValueError:
            raise ReviewUnavailable("SubjectAccessReview answer is not JSON") from None
        return status.get("allowed") is True and status.get("denied") is not True
