"""RequestInfo: what a request path means, after k8s.io/apiserver's RequestInfoFactory."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .rbac import Attributes
from .selectors import _split
from .web import Request

_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_NS_SUBRESOURCES = {"status", "finalize"}
STREAM_SUBRESOURCES = {"exec", "attach", "portforward"}


@dataclass(frozen=True)
class RequestInfo:
    attrs: Attributes
    api: bool = False  # under /api or /apis
    legacy_watch: bool = False

    @property
    def is_watch(self) -> bool:
        return self.attrs.verb == "watch"


def _name_from_field_selector(selector: str | None) -> str:
    for term in _split(selector or ""):
        for op in ("==", "="):
            if op in term and "!=" not in term:
                key, _, value = (s.strip() for s in term.partition(op))
                if (
                    key == "metadata.name"
                    and value
                    and "/" not in value
                    and value not in (".", "..")
                ):
                    return value
                break
    return ""


def request_info(req: Request) -> RequestInfo:
    """Classify `req` as a resource request (with attributes) or a non-resource one."""
    parts = [p for p in req.path.split("/") if p]
    non_resource = RequestInfo(
        Attributes(req.method.lower(), resource_request=False, path=req.path),
        api=bool(parts) and parts[0] in ("api", "apis"),
    )
    if not parts or parts[0] not in ("api", "apis"):
        return non_resource
    if parts[0] == "api":
        group, rest = "", parts[1:]
    else:
        if len(parts) < 3:
            return non_resource
        group, rest = parts[1], parts[2:]
    if len(rest) < 2:
        return non_resource
    version, rest = rest[0], rest[1:]
    verb = _VERBS.get(req.method, req.method.lower())
    legacy_watch = False
    if rest[0] == "watch":
        verb, rest, legacy_watch = "watch", rest[1:], True
        if not rest:
            return non_resource
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NS_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    attrs = Attributes(verb, True, group, version, resource, sub, namespace, name, req.path)
    if not name and verb == "get":
        verb = "watch" if req.flag("watch") else "list"
        attrs = replace(
            attrs, verb=verb, name=_name_from_field_selector(req.param("fieldSelector"))
        )
    elif not name and verb == "delete":
        attrs = replace(attrs, verb="deletecollection")
    if sub in STREAM_SUBRESOURCES and resource == "pods" and req.method == "GET":
        # AuthorizePodWebsocketUpgradeCreatePermission (on by default since 1.31)
        attrs = replace(attrs, verb="create")
    return RequestInfo(attrs, api=True, legacy_watch=legacy_watch)
