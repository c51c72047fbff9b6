"""The request pipeline: authenticate, impersonate, authorize, then route to a handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import discovery, logs, objects, reviews
from .impersonation import authenticate, caller_identity, impersonate
from .model import ApiError, Caller, EffectiveUser, method_not_allowed, not_found
from .model import resource_not_found as _404
from .rbac import RULES, Attributes, Rule, allowed, forbidden
from .resources import ResourceType, by_kind, find
from .rest import Rest
from .routing import STREAM_SUBRESOURCES, RequestInfo, request_info
from .selectors import field_selector, label_selector
from .store import Store
from .watch import WatchOptions, WatchStream, open_watch
from .web import JSON, Request, Response, Stream, Upgrade, json_response

Result = Response | Stream | Upgrade
PODS = find("", "v1", "pods")
NAMESPACES = find("", "v1", "namespaces")


@dataclass
class Outcome:
    """What the connection layer needs: the answer and who the request ran as."""

    result: Result
    identity: EffectiveUser | None


def error_response(err: ApiError, req: Request) -> Response:
    if err.text:
        msg = f'Internal Server Error: "{req.target.decode("latin-1")}": {err.message}\n'
        msg = msg.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return Response(
            err.code,
            msg.encode(),
            "text/plain; charset=utf-8",
            [("x-content-type-options", "nosniff")],
        )
    return json_response(err.status(), err.code)


class Api:
    """Everything behind the socket. Runs on the server's event loop only."""

    def __init__(
        self,
        tokens: Mapping[str, Caller],
        rules: Mapping[str, tuple[Rule, ...]] = RULES,
        bookmark_interval: float = 1.0,
        log_interval: float = 0.1,
    ) -> None:
        self.tokens = tokens
        self.rules = rules
        self.store = Store()
        self.rest = Rest(self.store)
        self.bookmark_interval = bookmark_interval
        self.log_interval = log_interval
        self.server_address = "127.0.0.1:0"
        self.active_watches = 0
        self.active_log_follows = 0
        self.seed()

    def seed(self) -> None:
        for ns in ("default", "kube-system", "kube-public"):
            self.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.put(objects.seed_pod("web-0"))

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object directly (defaults applied, events emitted)."""
        rtype = by_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if rtype is None or rtype.virtual:
            raise ValueError(f"cannot store {obj.get('apiVersion')}/{obj.get('kind')}")
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "default") if rtype.namespaced else ""
        obj = objects.check_body(obj, rtype, ns, None)
        old = self.store.get(rtype, ns, meta["name"])
        if old is None:
            objects.prepare_create(obj, rtype)
        else:
            obj = objects.prepare_update(old, obj, rtype)
        return self.store.put(rtype, obj)

    def get(
        self, api_version: str, kind: str, name: str, namespace: str = "default"
    ) -> dict[str, Any] | None:
        rtype = by_kind(api_version, kind)
        if rtype is None:
            raise ValueError(f"unknown kind {api_version}/{kind}")
        return self.store.get(rtype, namespace if rtype.namespaced else "", name)

    def _counter(self, attr: str) -> Callable[[int], None]:
        def bump(delta: int) -> None:
            setattr(self, attr, getattr(self, attr) + delta)

        return bump

    def _may(self, caller: Caller) -> Callable[[EffectiveUser, Attributes], bool]:
        def may(requestor: EffectiveUser, attrs: Attributes) -> bool:
            scope = reviews.scope_of(attrs.group, attrs.resource, attrs.namespace)
            return caller.may_impersonate or allowed(self.rules, requestor, attrs, scope)

        return may

    async def handle(self, req: Request) -> Outcome:
        identity: EffectiveUser | None = None
        try:
            caller = authenticate(req.headers, self.tokens)
            identity = caller_identity(caller)
            identity, _ = impersonate(caller, req.headers, self._may(caller))
            info = request_info(req)
            self._authorize(info, identity)
            return Outcome(await self._route(req, info, identity), identity)
        except ApiError as err:
            return Outcome(error_response(err, req), identity)

    def _authorize(self, info: RequestInfo, user: EffectiveUser) -> None:
        a = info.attrs
        if not allowed(self.rules, user, a, reviews.scope_of(a.group, a.resource, a.namespace)):
            raise forbidden(user.user, a)

    async def _route(self, req: Request, info: RequestInfo, user: EffectiveUser) -> Result:
        if not info.attrs.resource_request:
            return self._non_resource(req)
        a = info.attrs
        rtype = find(a.group, a.version, a.resource)
        if rtype is None:
            raise _404()
        if rtype.namespaced and not a.namespace and a.name:
            raise _404()
        namespace = a.namespace if rtype.namespaced else ""
        if not rtype.namespaced and a.namespace and rtype is not NAMESPACES:
            raise _404()
        if a.subresource:
            return self._subresource(req, rtype, namespace, a)
        if rtype.virtual:
            if req.method != "POST" or a.name:
                raise method_not_allowed()
            return self._review(req, rtype, user)
        if info.is_watch:
            return self._watch(req, rtype, namespace, a.name)
        if not a.name:
            return self._collection(req, rtype, namespace)
        handlers = {
            "GET": self.rest.get,
            "HEAD": self.rest.get,
            "PUT": self.rest.update,
            "PATCH": self.rest.patch,
            "DELETE": self.rest.delete,
        }
        if req.method not in handlers:
            raise method_not_allowed()
        return handlers[req.method](req, rtype, namespace, a.name)

    def _collection(self, req: Request, rtype: ResourceType, namespace: str) -> Result:
        if req.method in ("GET", "HEAD"):
            return self.rest.list(req, rtype, namespace)
        if req.method == "POST":
            return self.rest.create(req, rtype, namespace)
        if req.method == "DELETE":
            return self.rest.delete_collection(req, rtype, namespace)
        raise method_not_allowed()

    def _subresource(
        self, req: Request, rtype: ResourceType, namespace: str, a: Attributes
    ) -> Result:
        if not any(s.name == a.subresource for s in rtype.subresources):
            raise _404()
        if a.subresource == "log" and rtype is PODS:
            if req.method != "GET":
                raise method_not_allowed()
            return self._logs(req, namespace, a.name)
        if a.subresource in STREAM_SUBRESOURCES and rtype is PODS:
            if req.method not in ("GET", "POST"):
                raise method_not_allowed()
            if self.store.get(rtype, namespace, a.name) is None:
                raise not_found("", "pods", a.name)
            if "upgrade" not in (req.header("connection") or "").lower():
                raise ApiError(400, "BadRequest", "Upgrade request required")
            return Upgrade(a.subresource, namespace, a.name)
        if a.subresource == "status":
            if req.method == "GET":
                return self.rest.get(req, rtype, namespace, a.name)
            if req.method == "PUT":
                return self.rest.update(req, rtype, namespace, a.name, "status")
            if req.method == "PATCH":
                return self.rest.patch(req, rtype, namespace, a.name, "status")
        raise method_not_allowed()

    def _logs(self, req: Request, namespace: str, name: str) -> Result:
        pod = self.store.get(PODS, namespace, name)
        if pod is None:
            raise not_found("", "pods", name)
        logs.check_previous(req, pod, logs.pick_container(pod, req.param("container")))
        if req.flag("follow"):
            return Stream(
                200,
                "text/plain",
                logs.follow(req, self.log_interval, self._counter("active_log_follows")),
            )
        return Response(200, logs.history(req), "text/plain")

    def _watch(self, req: Request, rtype: ResourceType, namespace: str, name: str) -> Result:
        if req.method != "GET":
            raise method_not_allowed()
        timeout = req.param("timeoutSeconds")
        opts = WatchOptions(
            resource_version=req.param("resourceVersion"),
            timeout=float(timeout) if timeout else None,
            bookmarks=req.flag("allowWatchBookmarks"),
            bookmark_interval=self.bookmark_interval,
            send_initial_events=req.flag("sendInitialEvents"),
        )
        labels = label_selector(req.param("labelSelector"))
        fields = field_selector(req.param("fieldSelector"))

        def match(obj: dict[str, Any]) -> bool:
            if name and obj["metadata"]["name"] != name:
                return False
            return labels(obj) and fields(obj)

        watcher, error = open_watch(self.store, rtype, namespace, match, opts)
        ws = WatchStream(self.store, rtype, watcher, opts, self._counter("active_watches"), error)
        return Stream(200, JSON, ws.chunks(), cleanup=ws.close)

    def _review(self, req: Request, rtype: ResourceType, user: EffectiveUser) -> Result:
        return json_response(reviews.self_subject_review(user), 201)

    def _non_resource(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        doc: Any = None
        if path in ("/healthz", "/livez", "/readyz"):
            doc = b"ok"
        elif path == "/version":
            doc = discovery.VERSION
        elif path == "/api":
            doc = discovery.api_versions(self.server_address)
        elif path == "/apis":
            doc = discovery.api_group_list()
        elif parts[:1] == ["api"] and len(parts) == 2:
            doc = discovery.resource_list("", parts[1])
        elif parts[:1] == ["apis"] and len(parts) == 2:
            doc = discovery.api_group(parts[1])
        elif parts[:1] == ["apis"] and len(parts) == 3:
            doc = discovery.resource_list(parts[1], parts[2])
        if doc is None:
            raise _404()
        if req.method not in ("GET", "HEAD"):
            raise method_not_allowed()
        if isinstance(doc, bytes):
            return Response(200, doc, "text/plain; charset=utf-8")
        return json_response(doc)
