"""Label and field selectors (the common subset: =, ==, !=, in, notin, exists, !exists)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .model import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(expr: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _term(term: str, get: Callable[[dict[str, Any], str], str | None], sets: bool) -> Predicate:
    m = _SET.match(term) if sets else None
    if m:
        key, op, raw = m.group(1), m.group(2), m.group(3)
        values = {v.strip() for v in raw.split(",")}
        if op == "in":
            return lambda o: get(o, key) in values
        return lambda o: get(o, key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, _, value = (s.strip() for s in term.partition(op))
            if op == "!=":
                return lambda o: get(o, key) != value
            return lambda o: get(o, key) == value
    if not sets:
        raise bad_request(f'invalid field selector: "{term}"')
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda o: get(o, key) is None
    return lambda o: get(o, term) is not None


def _all(preds: list[Predicate]) -> Predicate:
    return lambda o: all(p(o) for p in preds)


def _label(obj: dict[str, Any], key: str) -> str | None:
    return (obj.get("metadata", {}).get("labels") or {}).get(key)


def _field(obj: dict[str, Any], path: str) -> str | None:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return str(cur).lower()
    return str(cur)


def label_selector(expr: str | None) -> Predicate:
    """Predicate for a `labelSelector` query value."""
    if not expr:
        return lambda o: True
    return _all([_term(t, _label, True) for t in _split(expr)])


def field_selector(expr: str | None) -> Predicate:
    """Predicate for a `fieldSelector` query value (any dotted path)."""
    if not expr:
        return lambda o: True
    return _all([_term(t, _field, False) for t in _split(expr)])
