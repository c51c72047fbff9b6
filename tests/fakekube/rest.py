"""Resource handlers: get, list, create, update, patch, delete on the in-memory store."""

from __future__ import annotations

import base64
import binascii
import copy
import json
from dataclasses import dataclass
from typing import Any

import yaml

from . import managed, objects, patching
from .model import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    not_found,
    success_status,
)
from .resources import ResourceType, by_resource, find
from .selectors import field_selector, label_selector
from .store import Store
from .web import JSON, Request, Response, json_response

Obj = dict[str, Any]
NAMESPACES = find("", "v1", "namespaces")
GRACEFUL = ("pods", "namespaces")  # DELETE answers the object, not a Status
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)


def _media(req: Request) -> str:
    return (req.header("content-type") or JSON).split(";")[0].strip().lower()


def parse_body(req: Request) -> Any:
    """JSON (or YAML) request body; 415 for anything else, 400 when malformed."""
    media = _media(req)
    try:
        if media in ("application/yaml", "application/apply-patch+yaml"):
            return yaml.safe_load(req.body or b"")
        if media == "application/json" or media.endswith("+json") or media == "":
            return json.loads(req.body or b"null")
    except (ValueError, KeyError, yaml.YAMLError) as e:
        raise bad_request(f"the object provided is unrecognized or malformed: {e}") from e
    raise ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types "
        "include: application/json, application/yaml",
    )


def _dry_run(req: Request) -> bool:
    values = [v for k, v in req.query if k == "dryRun"]
    for v in values:
        if v != "All":
            raise bad_request(f'dryRun: Unsupported value: "{v}": supported values: "All"')
    return bool(values)


def _field_manager(req: Request, default: str = "") -> str:
    manager = req.param("fieldManager")
    if manager:
        if len(manager) > 128:
            raise bad_request("fieldManager: Too long: may not be longer than 128")
        return manager
    agent = req.header("user-agent") or default
    return agent.split("/")[0] or "unknown"


def _field_validation(req: Request, obj: Obj, rtype: ResourceType) -> list[str]:
    """Apply `fieldValidation` (Strict -> 400, Warn (default) -> warnings, Ignore)."""
    mode = req.param("fieldValidation") or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise bad_request(f"fieldValidation: Unsupported value: {mode!r}")
    problems = objects.unknown_fields(obj, rtype)
    if problems and mode == "Strict":
        raise bad_request("strict decoding error: " + ", ".join(problems))
    return problems if mode == "Warn" else []


def _warn(messages: list[str]) -> list[tuple[str, str]]:
    return [("warning", f'299 - "{m}"') for m in messages]


def _encode_continue(rv: int, key: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": key + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return str(json.loads(raw)["start"])
    except (binascii.Error, ValueError, KeyError, TypeError) as e:
        raise bad_request(f"continue key is not valid: {e}") from e


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _out(obj: Obj, rtype: ResourceType) -> Obj:
    return {
        "kind": rtype.kind,
        "apiVersion": rtype.api_version,
        **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")},
    }


def _etag(obj: Obj) -> str:
    meta = obj["metadata"]
    return f'"{meta.get("uid", "")}-{meta.get("resourceVersion", "")}"'


@dataclass
class Rest:
    store: Store

    def _object_response(
        self,
        req: Request,
        rtype: ResourceType,
        obj: Obj,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> Response:
        return json_response(_out(obj, rtype), status, headers=_warn(warnings or []))

    def _require_namespace(self, rtype: ResourceType, namespace: str) -> None:
        if rtype.namespaced and self.store.get(NAMESPACES, "", namespace) is None:
            raise not_found("", "namespaces", namespace)

    def matching(self, req: Request, rtype: ResourceType, namespace: str) -> list[Obj]:
        labels = label_selector(req.param("labelSelector"))
        fields = field_selector(req.param("fieldSelector"))
        return [o for o in self.store.list(rtype, namespace) if labels(o) and fields(o)]

    def get(self, req: Request, rtype: ResourceType, namespace: str, name: str) -> Response:
        obj = self.store.get(rtype, namespace, name)
        if obj is None:
            raise not_found(rtype.group, rtype.plural, name)
        etag = _etag(obj)
        if req.header("if-none-match") == etag:
            return Response(304, b"", JSON, [("etag", etag)])
        resp = self._object_response(req, rtype, obj)
        resp.headers.append(("etag", etag))
        return resp

    def list(self, req: Request, rtype: ResourceType, namespace: str) -> Response:
        items = self.matching(req, rtype, namespace)
        token = req.param("continue")
        if token:
            start = _decode_continue(token)
            items = [o for o in items if _key(o) + "\x00" > start]
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        limit = int(req.param("limit") or 0)
        if limit > 0 and len(items) > limit:
            meta["continue"] = _encode_continue(self.store.rv, _key(items[limit - 1]))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        stripped = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return json_response(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": meta,
                "items": stripped,
            }
        )

    def create(self, req: Request, rtype: ResourceType, namespace: str) -> Response:
        obj = objects.check_body(parse_body(req), rtype, namespace, None)
        objects.generate_name(obj)
        warnings = _field_validation(req, obj, rtype)
        objects.validate_name(obj, rtype)
        self._require_namespace(rtype, namespace)
        name = obj["metadata"]["name"]
        if self.store.get(rtype, namespace, name) is not None:
            raise already_exists(rtype.group, rtype.plural, name)
        if rtype.has_status:
            obj.pop("status", None)
        objects.prepare_create(obj, rtype)
        obj["metadata"].pop("managedFields", None)
        managed.record_update(None, obj, _field_manager(req), rtype)
        if not _dry_run(req):
            obj = self.store.put(rtype, obj)
        return self._object_response(req, rtype, obj, 201, warnings)

    def _save(
        self,
        req: Request,
        rtype: ResourceType,
        old: Obj,
        new: Obj,
        warnings: list[str],
        status: int = 200,
    ) -> Response:
        def comparable(o: Obj) -> Obj:
            o = copy.deepcopy(o)
            o["metadata"].pop("resourceVersion", None)
            for e in o["metadata"].get("managedFields") or []:
                e.pop("time", None)
            return o

        if comparable(old) == comparable(new):
            return self._object_response(req, rtype, old, 200, warnings)
        if not _dry_run(req):
            new = self.store.put(rtype, new)
        else:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self._object_response(req, rtype, new, status, warnings)

    def _check_rv(self, rtype: ResourceType, old: Obj, new: Obj) -> None:
        rv = new["metadata"].get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            raise conflict(
                rtype.group,
                rtype.plural,
                old["metadata"]["name"],
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )

    def _existing(self, rtype: ResourceType, namespace: str, name: str) -> Obj:
        old = self.store.get(rtype, namespace, name)
        if old is None:
            raise not_found(rtype.group, rtype.plural, name)
        return old

    def update(
        self, req: Request, rtype: ResourceType, namespace: str, name: str, subresource: str = ""
    ) -> Response:
        old = self._existing(rtype, namespace, name)
        new = objects.check_body(parse_body(req), rtype, namespace, name)
        warnings = _field_validation(req, new, rtype)
        self._check_rv(rtype, old, new)
        new = self._finish(old, new, rtype, subresource)
        managed.record_update(old, new, _field_manager(req), rtype, subresource)
        return self._save(req, rtype, old, new, warnings)

    def _finish(self, old: Obj, new: Obj, rtype: ResourceType, subresource: str) -> Obj:
        """Status writes keep everything but status; main writes keep status."""
        if subresource == "status":
            result = copy.deepcopy(old)
            result["status"] = new.get("status", {})
            result["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
            return result
        new["metadata"]["managedFields"] = old["metadata"].get("managedFields", [])
        return objects.prepare_update(old, new, rtype)

    def patch(
        self, req: Request, rtype: ResourceType, namespace: str, name: str, subresource: str = ""
    ) -> Response:
        media = _media(req)
        if media not in PATCH_TYPES:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: {', '.join(PATCH_TYPES)}",
            )
        body = parse_body(req)
        if media == "application/apply-patch+yaml":
            return self._apply(req, rtype, namespace, name, body, subresource)
        old = self._existing(rtype, namespace, name)
        if media == "application/json-patch+json":
            new = patching.json_patch(old, body)
        elif media == "application/merge-patch+json":
            new = patching.merge_patch(old, body)
        else:
            new = patching.strategic_merge_patch(old, body)
        new = objects.check_body(new, rtype, namespace, name)
        warnings = _field_validation(req, new, rtype)
        self._check_rv(rtype, old, new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new = self._finish(old, new, rtype, subresource)
        managed.record_update(old, new, _field_manager(req), rtype, subresource)
        return self._save(req, rtype, old, new, warnings)

    def _apply(
        self,
        req: Request,
        rtype: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        subresource: str,
    ) -> Response:
        manager = req.param("fieldManager")
        if not manager:
            raise bad_request("PATCH, fieldManager: Required value: is required for apply patch")
        config = objects.check_body(body, rtype, namespace, name)
        config["metadata"].setdefault("name", name)
        warnings = _field_validation(req, config, rtype)
        force = req.flag("force")
        old = self.store.get(rtype, namespace, name)
        if old is None:
            self._require_namespace(rtype, namespace)
            new = managed.apply(None, config, manager, force, rtype)
            objects.validate_name(new, rtype)
            objects.prepare_create(new, rtype)
            if not _dry_run(req):
                new = self.store.put(rtype, new)
            return self._object_response(req, rtype, new, 201, warnings)
        new = managed.apply(old, config, manager, force, rtype)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if subresource != "status":
            new = objects.prepare_update(old, new, rtype)
        return self._save(req, rtype, old, new, warnings)

    def _deleted(self, rtype: ResourceType, obj: Obj, dry: bool) -> Obj:
        """Remove `obj`. Pods and namespaces first turn Terminating (a MODIFIED event with
        deletionTimestamp), then go at once, as if the kubelet/controller were instant."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        if rtype.plural in GRACEFUL:
            meta["deletionTimestamp"] = managed.now()
            if rtype.plural == "pods":
                meta["deletionGracePeriodSeconds"] = 30
            else:
                obj.setdefault("status", {})["phase"] = "Terminating"
            if not dry:
                obj = self.store.put(rtype, obj)
        if dry:
            return obj
        if rtype.plural == "namespaces":
            for key in [k for k in self.store.objects if k[2] == meta["name"]]:
                t = by_resource(key[0], key[1])
                if t is not None:
                    self.store.remove(t, key[2], key[3])
        gone = self.store.remove(rtype, ns, meta["name"])
        return obj if rtype.plural in GRACEFUL or gone is None else gone

    def delete(self, req: Request, rtype: ResourceType, namespace: str, name: str) -> Response:
        old = self._existing(rtype, namespace, name)
        options = parse_body(req) if req.body else {}
        pre = (options or {}).get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
            raise conflict(
                rtype.group,
                rtype.plural,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                f"object meta: {old['metadata']['uid']}",
            )
        if (
            pre.get("resourceVersion")
            and pre["resourceVersion"] != old["metadata"]["resourceVersion"]
        ):
            raise conflict(
                rtype.group,
                rtype.plural,
                name,
                "the object has been modified; please apply your changes to the "
                "latest version and try again",
            )
        dry = _dry_run(req) or "All" in ((options or {}).get("dryRun") or [])
        gone = self._deleted(rtype, old, dry)
        if rtype.plural in GRACEFUL:
            return json_response(_out(gone, rtype))
        details = {
            "name": name,
            **({"group": rtype.group} if rtype.group else {}),
            "kind": rtype.plural,
            "uid": old["metadata"]["uid"],
        }
        return json_response(success_status(details))

    def delete_collection(self, req: Request, rtype: ResourceType, namespace: str) -> Response:
        dry = _dry_run(req)
        items = [self._deleted(rtype, o, dry) for o in self.matching(req, rtype, namespace)]
        return json_response(
            {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": items,
            }
        )
