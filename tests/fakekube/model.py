"""Plain data types shared by the fake API server: callers, identities, records, errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Caller:
    """Who a bearer token authenticates as (before any impersonation)."""

    user: str
    groups: tuple[str, ...] = ()
    may_impersonate: bool = False


@dataclass(frozen=True)
class EffectiveUser:
    """The identity a request runs as, after impersonation (like user.Info)."""

    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)

    def user_info(self) -> dict[str, Any]:
        """The `UserInfo` JSON shape used by reviews."""
        info: dict[str, Any] = {"username": self.user, "groups": list(self.groups)}
        if self.uid:
            info["uid"] = self.uid
        if self.extra:
            info["extra"] = {k: list(v) for k, v in self.extra.items()}
        return info


@dataclass
class Record:
    """One request as the server saw it; `status` is the status code it answered."""

    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    identity: EffectiveUser | None
    status: int

    def header(self, name: str) -> list[str]:
        """All values of header `name` (case-insensitive), in order."""
        want = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == want]


class ApiError(Exception):
    """An error answered as a `Status` object (or plain text when `text` is set)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        text: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.text = text

    def status(self) -> dict[str, Any]:
        """The `Status` body kube-apiserver would send."""
        return status_body(self.code, self.reason, self.message, self.details)


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A failure `Status` object with fields in kube-apiserver's order."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def success_status(details: dict[str, Any]) -> dict[str, Any]:
    """A `Status` reporting success (as DELETE answers for most kinds)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def qualified(group: str, resource: str) -> str:
    """`schema.GroupResource.String()`: `pods`, `deployments.apps`."""
    return f"{resource}.{group}" if group else resource


def _details(group: str, resource: str, name: str) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def not_found(group: str, resource: str, name: str) -> ApiError:
    """`apierrors.NewNotFound`."""
    return ApiError(
        404,
        "NotFound",
        f'{qualified(group, resource)} "{name}" not found',
        _details(group, resource, name),
    )


def already_exists(group: str, resource: str, name: str) -> ApiError:
    """`apierrors.NewAlreadyExists`."""
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(group, resource)} "{name}" already exists',
        _details(group, resource, name),
    )


def conflict(group: str, resource: str, name: str, why: str) -> ApiError:
    """`apierrors.NewConflict`."""
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(group, resource)} "{name}": {why}',
        _details(group, resource, name),
    )


def bad_request(message: str) -> ApiError:
    """`apierrors.NewBadRequest`."""
    return ApiError(400, "BadRequest", message)


def invalid(kind: str, group: str, name: str, field: str, value: Any, why: str) -> ApiError:
    """`apierrors.NewInvalid` with a single field cause."""
    cause = f"{field}: Invalid value: {value!r}: {why}".replace("'", '"')
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {cause}',
        {
            "name": name,
            **({"group": group} if group else {}),
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field}],
        },
    )


def resource_not_found() -> ApiError:
    """The 404 kube-apiserver sends for paths it does not serve."""
    return ApiError(
        404,
        "NotFound",
        "the server could not find the requested resource",
        {},
    )


def method_not_allowed() -> ApiError:
    """`apierrors.NewMethodNotSupported`-style 405."""
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        {},
    )
