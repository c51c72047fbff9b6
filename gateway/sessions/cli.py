"""`vgate sessions list|show|play`: the recorded exec/attach sessions, for platform admins.

They read the recording directory (`--config`: the gateway's `sessions.recording.directory`,
or `--dir`). `play` writes a cast's output to the terminal with its timing (`--speed`
divides the pauses, `--max-wait` caps each); the bytes are exactly those the client got.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from gateway.sessions import cast


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sessions", help="recorded exec/attach sessions (list, show, play)")
    ssub = p.add_subparsers(dest="sessions_command", required=True)
    for name, text in (
        ("list", "list recorded sessions, newest first"),
        ("show", "a session's details and how it ended"),
        ("play", "replay a session's terminal output with its timing"),
    ):
        q = ssub.add_parser(name, help=text)
        where = q.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", type=Path, help="the gateway's config file")
        where.add_argument("--dir", type=Path, help="the recording directory")
        if name == "list":
            q.add_argument("--tenant", help="only this tenant's sessions")
            q.add_argument("--user", help="only this user's sessions")
            q.add_argument("--limit", type=int, default=50, help="at most this many (50)")
            q.add_argument("--json", action="store_true", help="one JSON object per line")
        else:
            q.add_argument("session", help="the session id (or a unique prefix of it)")
        if name == "play":
            q.add_argument(
                "--speed", type=float, default=1.0, help="play this many times faster (default 1)"
            )
            q.add_argument(
                "--max-wait",
                type=float,
                default=None,
                metavar="SECONDS",
                help="cap every pause at this many seconds",
            )


def run(args: argparse.Namespace, load_config: Callable[[Path], Any]) -> int:
    """Run `vgate sessions …`; `load_config` reads `--config` (None when it is invalid)."""
    directory = args.dir
    if directory is None:
        config = load_config(args.config)
        if config is None:
            return 1
        directory = config.sessions.recording.directory
    if not Path(directory).is_dir():
        print(f"no recordings: {directory} does not exist", file=sys.stderr)
        return 1
    if args.sessions_command == "list":
        return list_sessions(Path(directory), args.tenant, args.user, args.limit, args.json)
    path = cast.find(Path(directory), args.session)
    if path is None:
        print(f"no single recording matches {args.session!r} in {directory}", file=sys.stderr)
        return 1
    if args.sessions_command == "show":
        return show(path)
    if args.speed <= 0:
        print("--speed must be positive", file=sys.stderr)
        return 2
    return play(path, sys.stdout.buffer, speed=args.speed, max_wait=args.max_wait)


def summary(found: cast.Cast) -> dict[str, Any]:
    """What `list` shows of one cast."""
    meta = found.vgate
    markers = cast.tail_markers(found.path)
    ended = next((m for m in reversed(markers) if cast.EXIT_MARKER.match(m)), "running or cut")
    return {
        "session": found.session,
        "started": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(found.header.get("timestamp", 0))
        ),
        "user": meta.get("user"),
        "tenant": meta.get("tenant"),
        "pod": f"{meta.get('namespace')}/{meta.get('pod')}"
        + (f"/{meta['container']}" if meta.get("container") else ""),
        "kind": meta.get("kind"),
        "command": found.header.get("command", ""),
        "ended": ended,
        "bytes": found.path.stat().st_size,
    }


def list_sessions(
    directory: Path, tenant: str | None, user: str | None, limit: int, as_json: bool
) -> int:
    names = sorted((n for n in os.listdir(directory) if n.endswith(".cast")), reverse=True)
    rows = []
    for name in names:
        try:
            found = cast.read_header(directory / name)
        except (OSError, ValueError):
            continue
        meta = found.vgate
        if (tenant and meta.get("tenant") != tenant) or (user and meta.get("user") != user):
            continue
        rows.append(summary(found))
        if len(rows) >= limit:
            break
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return 0
    columns = ("session", "started", "user", "tenant", "pod", "kind", "command", "ended")
    table = [[str(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i][:40]) for r in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in table:
        print("  ".join(v[:40].ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def show(path: Path) -> int:
    found = cast.read_header(path)
    header = found.header
    print(f"session     {found.session}")
    print(f"file        {path} ({path.stat().st_size} bytes)")
    print(f"started     {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(header['timestamp']))}")
    print(f"terminal    {header.get('width')}x{header.get('height')}")
    for key, value in found.vgate.items():
        if key != "session":
            print(f"{key:<12}{json.dumps(value) if isinstance(value, list | dict) else value}")
    with open(path, "rb") as f:
        last = 0.0
        for seconds, code, text in cast.events(f):
            last = seconds
            if code == cast.MARKER:
                print(f"{seconds:10.3f}s  {text}")
    print(f"duration    {last:.3f}s")
    return 0


def play(
    path: Path,
    out: BinaryIO,
    *,
    speed: float = 1.0,
    max_wait: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write the cast's output events to `out`, waiting between them as recorded."""
    cast.read_header(path)
    with open(path, "rb") as f:
        last = 0.0
        for seconds, code, text in cast.events(f):
            if code != cast.OUTPUT:
                continue
            pause = max(0.0, seconds - last) / speed
            if max_wait is not None:
                pause = min(pause, max_wait)
            if pause > 0:
                out.flush()
                sleep(pause)
            last = seconds
            out.write(cast.raw(text))
    out.flush()
    return 0
