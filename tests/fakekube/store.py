"""In-memory object storage with a global resourceVersion, event history and watchers."""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .resources import ResourceType

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # group, plural, namespace, name
HISTORY = 10_000


def key_of(rtype: ResourceType, namespace: str, name: str) -> Key:
    return (rtype.group, rtype.plural, namespace if rtype.namespaced else "", name)


@dataclass
class Event:
    type: str  # ADDED | MODIFIED | DELETED
    rv: int
    rtype: ResourceType
    obj: Obj
    old: Obj | None = None


@dataclass(eq=False)
class Watcher:
    """A subscription: events for `rtype` in `namespace` ("" = all) passing `match`."""

    rtype: ResourceType
    namespace: str
    match: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Obj]] = field(default_factory=asyncio.Queue)

    def offer(self, ev: Event) -> None:
        """Queue `ev` as this watcher sees it (selector enter/leave become ADDED/DELETED)."""
        if ev.rtype.plural != self.rtype.plural or ev.rtype.group != self.rtype.group:
            return
        ns = ev.obj.get("metadata", {}).get("namespace", "")
        if self.namespace and ns != self.namespace:
            return
        now = self.match(ev.obj)
        before = ev.old is not None and self.match(ev.old)
        if ev.type == "MODIFIED":
            if now and before:
                self.queue.put_nowait(("MODIFIED", ev.obj))
            elif now:
                self.queue.put_nowait(("ADDED", ev.obj))
            elif before:
                self.queue.put_nowait(("DELETED", ev.obj))
        elif now:
            self.queue.put_nowait((ev.type, ev.obj))


class Store:
    """Objects by key. Call only from the server's event loop."""

    def __init__(self, first_rv: int = 100) -> None:
        self.rv = first_rv
        self.objects: dict[Key, Obj] = {}
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self.watchers: set[Watcher] = set()

    def oldest_rv(self) -> int:
        """Events after this resourceVersion can be replayed."""
        return self.history[0].rv - 1 if len(self.history) == HISTORY else 0

    def get(self, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get(key_of(rtype, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, rtype: ResourceType, namespace: str = "") -> list[Obj]:
        """Objects of `rtype` (in `namespace`, or all), sorted by namespace/name."""
        found = [
            (k, o)
            for k, o in self.objects.items()
            if k[:2] == (rtype.group, rtype.plural) and (not namespace or k[2] == namespace)
        ]
        return [copy.deepcopy(o) for _, o in sorted(found, key=lambda ko: ko[0])]

    def _emit(self, ev: Event) -> None:
        self.history.append(ev)
        for w in list(self.watchers):
            w.offer(ev)

    def put(self, rtype: ResourceType, obj: Obj) -> Obj:
        """Create or replace `obj`, stamping a new resourceVersion; emits ADDED/MODIFIED."""
        meta = obj.setdefault("metadata", {})
        key = key_of(rtype, meta.get("namespace", ""), meta["name"])
        old = self.objects.get(key)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        stored = copy.deepcopy(obj)
        self.objects[key] = stored
        self._emit(Event("MODIFIED" if old else "ADDED", self.rv, rtype, stored, old))
        return copy.deepcopy(stored)

    def remove(self, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
        """Delete; the DELETED event carries the object with a fresh resourceVersion."""
        old = self.objects.pop(key_of(rtype, namespace, name), None)
        if old is None:
            return None
        self.rv += 1
        gone = copy.deepcopy(old)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(Event("DELETED", self.rv, rtype, gone, old))
        return copy.deepcopy(gone)

    def since(self, rv: int) -> list[Event]:
        """Recorded events with resourceVersion > rv."""
        return [ev for ev in self.history if ev.rv > rv]
