"""Bearer-token authentication and the impersonation filter, after k8s.io/apiserver."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from .model import ApiError, Caller, EffectiveUser
from .rbac import Attributes, forbidden

AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
EXTRA_PREFIX = "impersonate-extra-"

Headers = list[tuple[str, str]]


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def authenticate(headers: Headers, tokens: Mapping[str, Caller]) -> Caller:
    """Resolve `Authorization: Bearer <token>`; 401 Status when missing or unknown."""
    for name, value in headers:
        if name == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip() in tokens:
                return tokens[token.strip()]
            raise unauthorized()
    raise unauthorized()


def caller_identity(caller: Caller) -> EffectiveUser:
    """The user.Info a token authenticator yields: groups plus system:authenticated."""
    groups = tuple(caller.groups)
    if AUTHENTICATED not in groups:
        groups += (AUTHENTICATED,)
    return EffectiveUser(user=caller.user, groups=groups)


@dataclass(frozen=True)
class _Ask:
    """One thing to impersonate (an ObjectReference in the real filter)."""

    kind: str
    name: str
    namespace: str = ""
    api_version: str = ""
    field_path: str = ""

    def __str__(self) -> str:
        # Go's %v of v1.ObjectReference{Kind, Namespace, Name, UID, APIVersion, RV, FieldPath}
        return (
            f"{{{self.kind} {self.namespace} {self.name}  {self.api_version}  {self.field_path}}}"
        )


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k == name]


def _asks(headers: Headers) -> list[_Ask]:
    """`buildImpersonationRequests`: user, groups, extras, uid - in that order."""
    asks: list[_Ask] = []
    users = _values(headers, "impersonate-user")
    user = users[0] if users else ""
    if user:
        parts = user.split(":")
        if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"] and all(parts[2:]):
            asks.append(_Ask("ServiceAccount", parts[3], namespace=parts[2]))
        else:
            asks.append(_Ask("User", user))
    groups = [_Ask("Group", g) for g in _values(headers, "impersonate-group")]
    asks += groups
    extras: dict[str, list[str]] = {}
    for k, v in headers:
        if k.startswith(EXTRA_PREFIX):
            extras.setdefault(unquote(k[len(EXTRA_PREFIX) :]), []).append(v)
    for key, values in extras.items():
        asks += [
            _Ask("UserExtra", v, api_version="authentication.k8s.io/v1", field_path=key)
            for v in values
        ]
    uids = _values(headers, "impersonate-uid")
    if uids and uids[0]:
        asks.append(_Ask("UID", uids[0], api_version="authentication.k8s.io/v1"))
    if (groups or extras or (uids and uids[0])) and not user:
        raise ApiError(
            500,
            "InternalError",
            f"requested [{' '.join(str(a) for a in asks)}] without impersonating a user",
            text=True,
        )
    return asks


def _attributes(ask: _Ask) -> Attributes:
    if ask.kind == "ServiceAccount":
        return Attributes(
            "impersonate", resource="serviceaccounts", namespace=ask.namespace, name=ask.name
        )
    if ask.kind == "User":
        return Attributes("impersonate", resource="users", name=ask.name)
    if ask.kind == "Group":
        return Attributes("impersonate", resource="groups", name=ask.name)
    if ask.kind == "UserExtra":
        return Attributes(
            "impersonate",
            group="authentication.k8s.io",
            version="v1",
            resource="userextras",
            subresource=ask.field_path,
            name=ask.name,
        )
    return Attributes(
        "impersonate", group="authentication.k8s.io", version="v1", resource="uids", name=ask.name
    )


def impersonate(
    caller: Caller,
    headers: Headers,
    may: Callable[[EffectiveUser, Attributes], bool],
) -> tuple[EffectiveUser, bool]:
    """Apply Impersonate-* headers. Returns (effective user, whether impersonated).

    `may(requestor, attrs)` decides each impersonation step (RBAC or `may_impersonate`).
    """
    requestor = caller_identity(caller)
    asks = _asks(headers)
    if not asks:
        return requestor, False
    groups_given = bool(_values(headers, "impersonate-group"))
    username, uid = "", ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for ask in asks:
        attrs = _attributes(ask)
        if ask.kind == "ServiceAccount":
            username = f"system:serviceaccount:{ask.namespace}:{ask.name}"
            if not groups_given:
                groups = ["system:serviceaccounts", f"system:serviceaccounts:{ask.namespace}"]
        elif ask.kind == "User":
            username = ask.name
        elif ask.kind == "Group":
            groups.append(ask.name)
        elif ask.kind == "UserExtra":
            extra.setdefault(ask.field_path, []).append(ask.name)
        else:
            uid = ask.name
        if not may(requestor, attrs):
            raise forbidden(requestor.user, attrs)
    if username == "system:anonymous":
        if UNAUTHENTICATED not in groups:
            groups.append(UNAUTHENTICATED)
    elif AUTHENTICATED not in groups and UNAUTHENTICATED not in groups:
        groups.append(AUTHENTICATED)
    return EffectiveUser(user=username, uid=uid, groups=tuple(groups), extra=extra), True
