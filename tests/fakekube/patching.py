"""Merge patch (RFC 7386), a strategic-merge approximation and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from .model import ApiError, bad_request

Obj = dict[str, Any]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _keyed(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Like merge patch, but lists of named maps merge by `name` and `$` directives apply.

    Good enough for what kubectl sends (apply, edit, label, set image, rollout restart).
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            result.pop(k, None)
        elif (
            isinstance(v, list)
            and _keyed([i for i in v if "$patch" not in i])
            and (isinstance(result.get(k), list) and _keyed(result[k]))
        ):
            result[k] = _merge_named(result[k], v)
        else:
            result[k] = strategic_merge_patch(result.get(k), v)
    return result


def _merge_named(current: list[Obj], patch: list[Obj]) -> list[Obj]:
    out = copy.deepcopy(current)
    index = {item["name"]: i for i, item in enumerate(out)}
    for item in patch:
        name = item.get("name")
        if item.get("$patch") == "delete":
            out = [o for o in out if o.get("name") != name]
            index = {o["name"]: i for i, o in enumerate(out)}
        elif name in index:
            out[index[name]] = strategic_merge_patch(out[index[name]], item)
        else:
            out.append(strategic_merge_patch({}, item))
            index[name] = len(out) - 1
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    return cur


def _op(doc: Any, op: dict[str, Any]) -> Any:
    kind, parts = op.get("op"), _pointer(op.get("path", ""))
    if kind in ("move", "copy"):
        src = _pointer(op.get("from", ""))
        value = copy.deepcopy(_get(doc, src))
        if kind == "move":
            doc = _op(doc, {"op": "remove", "path": op["from"]})
        return _op(doc, {"op": "add", "path": op["path"], "value": value})
    if kind == "test":
        if _get(doc, parts) != op.get("value"):
            raise ApiError(422, "Invalid", f"testing value {op.get('path')} failed")
        return doc
    if not parts:
        return copy.deepcopy(op.get("value")) if kind in ("add", "replace") else None
    parent, last = _parent(doc, parts), parts[-1]
    if kind == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    elif kind in ("add", "replace"):
        if isinstance(parent, list):
            if last == "-":
                parent.append(op.get("value"))
            elif kind == "add":
                parent.insert(int(last), op.get("value"))
            else:
                parent[int(last)] = op.get("value")
        else:
            if kind == "replace" and last not in parent:
                raise KeyError(last)
            parent[last] = op.get("value")
    else:
        raise bad_request(f"unknown JSON patch operation {kind!r}")
    return doc


def _get(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        cur = cur[int(p)] if isinstance(cur, list) else cur[p]
    return cur


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a copy of `target`."""
    if not isinstance(ops, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        try:
            doc = _op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our "
                f"request: {op.get('op')} operation does not apply: {e}",
            ) from e
    return doc
