"""The admin HTTP API: tenant operations for platform administrators, as an ASGI app.

    GET    {prefix}/tenants                 list
    POST   {prefix}/tenants                 create (JSON `TenantSpec`)          201 / 409 / 422
    GET    {prefix}/tenants/{name}          show                                      / 404
    POST   {prefix}/tenants/{name}/pause    pause
    POST   {prefix}/tenants/{name}/resume   resume
    POST   {prefix}/tenants/{name}/upgrade  {"k8s_version": "1.33"}
    DELETE {prefix}/tenants/{name}          delete                              202 / 404

Every request needs `Authorization: Bearer <token>`; `authenticate(token)` (injected: the
gateway's OIDC authenticator) returns an `Identity` or raises, and `is_platform_admin`
decides. Errors are Kubernetes `Status` bodies; validation errors list each field in
`details.causes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.http.asgi import SERVED_AS
from gateway.identity import Identity
from gateway.lifecycle.model import TenantSpec, field_problems
from gateway.lifecycle.operations import Refused, TenantOperations, describe
from gateway.lifecycle.stores.protocol import (
    Conflict,
    StoreError,
    TenantExists,
    TenantNotFound,
    UnreadableRecord,
)

log = logging.getLogger("vgate.admin")

MAX_BODY = 1 << 20
Authenticate = Callable[[str], Awaitable[Identity]]

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    413: "RequestEntityTooLarge",
    422: "Invalid",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_response(
    code: int,
    message: str,
    *,
    reason: str | None = None,
    causes: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if causes:
        body["details"] = {"causes": causes}
    return JSONResponse(body, status_code=code, headers=headers)


def validation_causes(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": field, "message": message, "reason": "FieldValueInvalid"}
        for field, message in field_problems(exc, whole="body")
    ]


def platform_admin_check(groups: Iterable[str], users: Iterable[str]) -> Callable[[Identity], bool]:
    """Allowed: any of `users`, or a member of any of `groups`. Empty lists allow nobody."""
    allowed_groups, allowed_users = frozenset(groups), frozenset(users)

    def check(identity: Identity) -> bool:
        return identity.username in allowed_users or bool(allowed_groups & set(identity.groups))

    return check


def admin_app(
    operations: TenantOperations,
    *,
    authenticate: Authenticate,
    is_platform_admin: Callable[[Identity], bool],
    prefix: str = "/admin",
    path_prefix: str | None = None,
    public_url: str | None = None,
) -> Starlette:
    def show(record) -> dict[str, Any]:
        return describe(record, path_prefix=path_prefix, public_url=public_url)

    async def admitted(request: Request) -> Response | Identity:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return status_response(
                401, "Unauthorized", headers={"WWW-Authenticate": 'Bearer realm="vgate"'}
            )
        try:
            identity = await authenticate(token.strip())
        except Exception as exc:
            log.info("admin API: authentication failed: %s", exc)
            return status_response(
                401,
                "Unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="vgate", error="invalid_token"'},
            )
        setattr(request.state, SERVED_AS, identity)  # the audit line names who asked
        if not is_platform_admin(identity):
            return status_response(
                403, f'user "{identity.username}" is not a platform administrator'
            )
        return identity

    def endpoint(handler):
        async def run(request: Request) -> Response:
            who = await admitted(request)
            if isinstance(who, Response):
                return who
            try:
                return await handler(request, who)
            except TenantNotFound as exc:
                return status_response(404, str(exc))
            except TenantExists as exc:
                return status_response(409, str(exc))
            except (Refused, Conflict) as exc:
                return status_response(409, str(exc), reason="Conflict")
            except ValidationError as exc:
                return status_response(422, "invalid tenant", causes=validation_causes(exc))
            except UnreadableRecord as exc:  # as kube-apiserver answers an undecodable object
                return status_response(500, str(exc), reason="InternalError")
            except StoreError as exc:  # locked, full, or the host cluster refused or is gone
                log.warning("admin API: the tenant store failed: %s", exc)
                return status_response(
                    503,
                    f"the tenant store failed: {exc}",
                    reason="ServiceUnavailable",
                    headers={"Retry-After": "1"},
                )
            except Exception:  # a Status like every other error; the details go to the log
                log.exception("admin API: %s %s failed", request.method, request.url.path)
                return status_response(500, "internal error (the gateway's log has the details)")

        return run

    async def body(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise _BadRequest(413, "request body too large")
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise _BadRequest(400, "body is not JSON") from None
        except RecursionError:  # `[[[[...` within the size bound: no spec is nested so deep
            raise _BadRequest(400, "body is JSON nested too deeply") from None

    async def list_tenants(request: Request, who: Identity) -> Response:
        return JSONResponse({"items": [show(r) for r in await operations.list()]})

    async def create(request: Request, who: Identity) -> Response:
        data = await body(request)
        if not isinstance(data, dict):
            raise _BadRequest(400, "body must be a JSON object (a tenant spec)")
        data.pop("desired", None)
        spec = TenantSpec.model_validate(data)
        record = await operations.create(spec)
        log.info("admin API: %s created tenant %s", who.username, spec.name)
        return JSONResponse(show(record), status_code=201)

    async def get(request: Request, who: Identity) -> Response:
        return JSONResponse(show(await operations.get(request.path_params["name"])))

    def action(name: str):
        async def run(request: Request, who: Identity) -> Response:
            tenant = request.path_params["name"]
            if name == "upgrade":
                data = await body(request)
                version = data.get("k8s_version") if isinstance(data, dict) else None
                if not isinstance(version, str):
                    raise _BadRequest(422, "k8s_version is required")
                record = await operations.upgrade(tenant, version)
            elif name == "set_token_passthrough":
                data = await body(request)
                if not isinstance(data, dict) or not isinstance(
                    data.get("token_passthrough"), bool
                ):
                    raise _BadRequest(422, "token_passthrough (true or false) is required")
                issuer = data.get("service_account_issuer")
                if issuer is not None and not isinstance(issuer, str):
                    raise _BadRequest(422, "service_account_issuer must be a string or null")
                record = await operations.set_token_passthrough(
                    tenant, data["token_passthrough"], issuer
                )
            else:
                record = await getattr(operations, name)(tenant)
            log.info("admin API: %s: %s %s", who.username, name, tenant)
            return JSONResponse(show(record), status_code=202 if name == "delete" else 200)

        return run

    def guarded(handler):
        async def run(request: Request, who: Identity) -> Response:
            try:
                return await handler(request, who)
            except _BadRequest as exc:
                return status_response(exc.code, exc.message)

        return endpoint(run)

    async def no_route(request: Request, exc: Exception) -> Response:
        """A path or method the API does not have: a `Status` like every other error."""
        code = exc.status_code if isinstance(exc, HTTPException) else 404
        message = "the admin API has no such path"
        if code == 405:
            message = f"{request.url.path} does not take {request.method}"
        headers = getattr(exc, "headers", None)
        return status_response(code, message, headers=dict(headers) if headers else None)

    base = prefix.rstrip("/")
    return Starlette(
        exception_handlers={HTTPException: no_route},
        routes=[
            Route(f"{base}/tenants", guarded(list_tenants), methods=["GET"]),
            Route(f"{base}/tenants", guarded(create), methods=["POST"]),
            Route(f"{base}/tenants/{{name}}", guarded(get), methods=["GET"]),
            Route(f"{base}/tenants/{{name}}", guarded(action("delete")), methods=["DELETE"]),
            *(
                Route(f"{base}/tenants/{{name}}/{verb}", guarded(action(verb)), methods=["POST"])
                for verb in ("pause", "resume", "upgrade")
            ),
            Route(
                f"{base}/tenants/{{name}}/token-passthrough",
                guarded(action("set_token_passthrough")),
                methods=["POST"],
            ),
        ],
    )


class _BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
