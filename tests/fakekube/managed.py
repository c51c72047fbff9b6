"""managedFields bookkeeping and server-side apply, simplified: lists are atomic."""

from __future__ import annotations

import copy
import datetime
from typing import Any

from .model import ApiError
from .resources import ResourceType

Obj = dict[str, Any]
Path = tuple[str, ...]
Owners = dict[tuple[str, str, str], set[Path]]  # (manager, operation, subresource) -> fields

_META_SKIP = {
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def leaves(obj: Obj, rtype: ResourceType) -> set[Path]:
    """Field paths an object sets (maps recurse, lists and scalars are leaves)."""
    out: set[Path] = set()

    def walk(value: Any, prefix: Path) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, (*prefix, k))
        else:
            out.add(prefix)

    for k, v in obj.items():
        if k in ("apiVersion", "kind") or (k == "status" and rtype.has_status):
            continue
        if k == "metadata" and isinstance(v, dict):
            for mk, mv in v.items():
                if mk not in _META_SKIP:
                    walk(mv, ("metadata", mk))
        else:
            walk(v, (k,))
    return out


def _value(obj: Obj, path: Path) -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _delete(obj: Obj, path: Path) -> None:
    cur: Any = obj
    for p in path[:-1]:
        if not isinstance(cur, dict) or p not in cur:
            return
        cur = cur[p]
    if isinstance(cur, dict):
        cur.pop(path[-1], None)


def _fields_v1(paths: set[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for p in path:
            node = node.setdefault(f"f:{p}", {})
    return tree


def _paths(tree: Obj, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for k, v in tree.items():
        if not k.startswith("f:"):
            continue
        child = (*prefix, k[2:])
        sub = _paths(v, child) if isinstance(v, dict) else set()
        out |= sub or {child}
    return out


def owners(obj: Obj) -> Owners:
    """Parse metadata.managedFields."""
    result: Owners = {}
    for e in obj.get("metadata", {}).get("managedFields") or []:
        key = (e.get("manager", ""), e.get("operation", "Update"), e.get("subresource", ""))
        result.setdefault(key, set()).update(_paths(e.get("fieldsV1") or {}))
    return result


def write_owners(obj: Obj, table: Owners, rtype: ResourceType) -> None:
    """Store `table` as metadata.managedFields (empty entries dropped)."""
    entries = []
    for (manager, op, sub), paths in table.items():
        if not paths:
            continue
        e: Obj = {
            "manager": manager,
            "operation": op,
            "apiVersion": rtype.api_version,
            "time": now(),
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(paths),
        }
        if sub:
            e["subresource"] = sub
        entries.append(e)
    meta = obj.setdefault("metadata", {})
    if entries:
        meta["managedFields"] = entries
    else:
        meta.pop("managedFields", None)


def record_update(
    old: Obj | None, new: Obj, manager: str, rtype: ResourceType, subresource: str = ""
) -> None:
    """An Update operation: `manager` takes every field it changed or added."""
    table = owners(old) if old else {}
    before = leaves(old, rtype) if old else set()
    after = leaves(new, rtype)
    changed = {p for p in after if old is None or _value(old, p) != _value(new, p)}
    gone = before - after
    for paths in table.values():
        paths -= changed | gone
        paths &= after
    table.setdefault((manager, "Update", subresource), set()).update(changed)
    write_owners(new, table, rtype)


def apply(live: Obj | None, config: Obj, manager: str, force: bool, rtype: ResourceType) -> Obj:
    """Server-side apply of `config` by `manager` onto `live` (None: create)."""
    cfg = leaves(config, rtype)
    table = owners(live) if live else {}
    base = copy.deepcopy(live) if live else {}
    mine = (manager, "Apply", "")
    conflicts = []
    for who, paths in table.items():
        if who == mine:
            continue
        for p in sorted(paths & cfg):
            if _value(base, p) != _value(config, p):
                conflicts.append((who[0], p))
    if conflicts and not force:
        raise _conflict_error(conflicts, rtype)
    for who, paths in table.items():
        if who != mine:
            paths -= cfg
    others = set().union(*(p for w, p in table.items() if w != mine)) if table else set()
    for p in table.get(mine, set()) - cfg - others:
        _delete(base, p)
    result = _overlay(base, config, rtype)
    table[mine] = cfg
    write_owners(result, table, rtype)
    return result


def _overlay(base: Obj, config: Obj, rtype: ResourceType) -> Obj:
    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a.get(k), v)
            return out
        return copy.deepcopy(b)

    cfg = {k: v for k, v in config.items() if not (k == "status" and rtype.has_status)}
    meta = {k: v for k, v in (cfg.get("metadata") or {}).items() if k not in _META_SKIP}
    result = merge(base, {**cfg, "metadata": meta})
    for k in ("name", "namespace"):
        if k in (config.get("metadata") or {}):
            result["metadata"][k] = config["metadata"][k]
    return result


def _conflict_error(conflicts: list[tuple[str, Path]], rtype: ResourceType) -> ApiError:
    causes = [
        {
            "reason": "FieldManagerConflict",
            "message": f'conflict with "{m}" using {rtype.api_version}',
            "field": "." + ".".join(p),
        }
        for m, p in conflicts
    ]
    lines = "\n".join(f"- {c['message']}: {c['field']}" for c in causes)
    n = len(causes)
    msg = f"Apply failed with {n} conflict{'s' if n > 1 else ''}: "
    msg += f"{causes[0]['message']}: {causes[0]['field']}" if n == 1 else f"\n{lines}"
    return ApiError(409, "Conflict", msg, {"causes": causes})
