"""Container logs: `line 1`, `line 2`, ... (HISTORY lines so far, then one per interval)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Any

from .model import bad_request
from .web import Request

HISTORY = 5  # lines a container "has written" before any request


def pick_container(pod: dict[str, Any], wanted: str | None) -> str:
    """The container a log request means, with kube-apiserver's 400s."""
    name = pod["metadata"]["name"]
    names = [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]
    if not wanted:
        if len(names) == 1:
            return names[0]
        raise bad_request(
            f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
        )
    if wanted not in names:
        raise bad_request(f"container {wanted} is not valid for pod {name}")
    return wanted


def check_previous(req: Request, pod: dict[str, Any], container: str) -> None:
    """No container here ever restarted, so `previous=true` fails like on a fresh pod."""
    if req.flag("previous"):
        raise bad_request(
            f'previous terminated container "{container}" in pod '
            f'"{pod["metadata"]["name"]}" not found'
        )


def _fmt(n: int, timestamps: bool) -> bytes:
    line = f"line {n}\n"
    if timestamps:
        ts = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
        line = f"{ts} {line}"
    return line.encode()


def _int(req: Request, name: str) -> int | None:
    raw = req.param(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as e:
        raise bad_request(f"invalid {name}: {raw!r}") from e


def history(req: Request) -> bytes:
    """The non-follow answer: the existing lines, `tailLines`/`limitBytes` applied."""
    tail = _int(req, "tailLines")
    numbers = list(range(1, HISTORY + 1))
    if tail is not None:
        numbers = numbers[max(0, len(numbers) - tail) :]
    body = b"".join(_fmt(n, req.flag("timestamps")) for n in numbers)
    limit = _int(req, "limitBytes")
    return body[:limit] if limit is not None else body


async def follow(
    req: Request, interval: float, counter: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """The follow answer: history at once, then a new line every `interval` forever."""
    counter(+1)
    try:
        first = history(req)
        if first:
            yield first
        n = HISTORY
        while True:
            await asyncio.sleep(interval)
            n += 1
            yield _fmt(n, req.flag("timestamps"))
    finally:
        counter(-1)
