"""Watch streams: newline-delimited `{"type", "object"}` events over a chunked response."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .model import status_body
from .resources import ResourceType
from .store import Store, Watcher

Obj = dict[str, Any]


@dataclass
class WatchOptions:
    resource_version: str | None = None
    timeout: float | None = None
    bookmarks: bool = False
    bookmark_interval: float = 1.0
    send_initial_events: bool = False


def _strip(obj: Obj, rtype: ResourceType) -> Obj:
    return {"kind": rtype.kind, "apiVersion": rtype.api_version, **obj}


def _line(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


def open_watch(
    store: Store,
    rtype: ResourceType,
    namespace: str,
    match: Callable[[Obj], bool],
    opts: WatchOptions,
) -> tuple[Watcher, Obj | None]:
    """Subscribe now (synchronously, so no event is missed) and queue what to replay.

    Returns the watcher and, if the resourceVersion is too old, the ERROR Status to send.
    """
    w = Watcher(rtype, namespace, match)
    rv = opts.resource_version
    if opts.send_initial_events or rv in (None, "", "0"):
        for obj in store.list(rtype, namespace):
            if match(obj):
                w.queue.put_nowait(("ADDED", obj))
        if opts.send_initial_events:
            w.queue.put_nowait(("INITIAL-END", {}))
    else:
        try:
            since = int(rv)
        except ValueError:
            since = -1
        if since < store.oldest_rv():
            return w, status_body(
                410, "Expired", f"too old resource version: {rv} ({store.oldest_rv()})"
            )
        for ev in store.since(since):
            w.offer(ev)
    store.watchers.add(w)
    return w, None


class WatchStream:
    """Produces the byte chunks of one watch; counts itself in `counter` while running."""

    def __init__(
        self,
        store: Store,
        rtype: ResourceType,
        watcher: Watcher,
        opts: WatchOptions,
        counter: Callable[[int], None],
        error: Obj | None = None,
    ) -> None:
        self.store, self.rtype, self.watcher, self.opts = store, rtype, watcher, opts
        self.counter, self.error = counter, error

    def close(self) -> None:
        self.store.watchers.discard(self.watcher)

    def _bookmark(self, initial_end: bool = False) -> bytes:
        meta: Obj = {"resourceVersion": str(self.store.rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return _line(
            "BOOKMARK",
            {"kind": self.rtype.kind, "apiVersion": self.rtype.api_version, "metadata": meta},
        )

    async def chunks(self) -> AsyncIterator[bytes]:
        self.counter(+1)
        try:
            if self.error is not None:
                yield _line("ERROR", self.error)
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.opts.timeout if self.opts.timeout else None
            interval = self.opts.bookmark_interval
            next_mark = loop.time() + interval if self.opts.bookmarks else None
            while True:
                waits = [t for t in (deadline, next_mark) if t is not None]
                wait = max(0.0, min(waits) - loop.time()) if waits else None
                try:
                    kind, obj = await asyncio.wait_for(self.watcher.queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        return
                    if next_mark is not None and loop.time() >= next_mark:
                        next_mark = loop.time() + interval
                        yield self._bookmark()
                    continue
                if kind == "INITIAL-END":
                    if self.opts.bookmarks:
                        yield self._bookmark(initial_end=True)
                    continue
                yield _line(kind, _strip(obj, self.rtype))
        finally:
            self.close()
            self.counter(-1)
