"""asciinema v2 `.cast` files: a JSON header line, then one JSON array per event
``[seconds, code, data]`` — ``"o"`` output, ``"i"`` input, ``"r"`` resize (``"WxH"``),
``"m"`` marker. Existing players (`asciinema play`, asciinema-player) read them as they are.

What vgate adds stays inside the format: the header's ``vgate`` object holds who, where and
what (user, tenant, pod, container, command, transports), and markers say what a player
should know — a gap or a cut in the recording, and, as the last event, how the session
ended (``exit 0``, ``exit 3``, ``exit unknown: …``).

Terminal bytes are decoded as UTF-8 with ``surrogateescape``: text stays text for players,
and any other byte survives as a lone surrogate, so `raw` gives back exactly what passed.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii  # the C implementation
from pathlib import Path
from typing import IO, Any

VERSION = 2
OUTPUT, INPUT, RESIZE, MARKER = "o", "i", "r", "m"
EXIT_MARKER = re.compile(r"^exit (\d+|unknown)")
_ENCODER = json.JSONEncoder(separators=(", ", ": "))  # ASCII: escapes keep any byte


def header(
    width: int,
    height: int,
    timestamp: float,
    *,
    command: str,
    title: str,
    env: dict[str, str],
    vgate: dict[str, Any],
) -> bytes:
    """The first line of a cast."""
    fields = {
        "version": VERSION,
        "width": width,
        "height": height,
        "timestamp": int(timestamp),
        "command": command,
        "title": title,
        "env": env,
        "vgate": vgate,
    }
    return (_ENCODER.encode(fields) + "\n").encode("ascii")


# JSON string escapes, applied to UTF-8 bytes: the C `json` encoder spends ~6 ns on every
# character; terminal output is mostly plain, so escaping only the bytes present is 3-4x
# cheaper (a cast line per output chunk is the cost of recording)
_ESCAPES = {
    **{bytes([b]): b"\\u%04x" % b for b in range(0x20)},
    b"\n": b"\\n",
    b"\r": b"\\r",
    b"\t": b"\\t",
    b"\x08": b"\\b",
    b"\x0c": b"\\f",
    b'"': b'\\"',
}
_ESCAPE_ORDER = ((b"\\", b"\\\\"), *_ESCAPES.items())  # the backslash first
_UNESCAPED = bytes(b for b in range(256) if bytes([b]) not in _ESCAPES and b != 0x5C)


def json_string(text: str) -> bytes:
    """`text` as a JSON string (UTF-8, quotes included); surrogate escapes of bytes that
    were not UTF-8 become `\\udcXX` escapes."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        return encode_basestring_ascii(text).encode("ascii")
    present = raw.translate(None, _UNESCAPED)
    if present:
        for byte, escaped in _ESCAPE_ORDER:
            if byte in present:
                raw = raw.replace(byte, escaped)
    return b'"' + raw + b'"'


def event(seconds: float, code: str, text: str) -> bytes:
    """One event line (`text` may hold surrogate escapes of raw bytes)."""
    return b'[%.6f, "%b", %b]\n' % (seconds, code.encode(), json_string(text))


def raw(text: str) -> bytes:
    """The bytes an event's text stands for (inverse of the recording's decoding)."""
    return text.encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Cast:
    """A cast file's header, for listing and showing."""

    path: Path
    header: dict[str, Any]

    @property
    def vgate(self) -> dict[str, Any]:
        value = self.header.get("vgate")
        return value if isinstance(value, dict) else {}

    @property
    def session(self) -> str:
        return str(self.vgate.get("session") or self.path.stem)


def read_header(path: Path) -> Cast:
    """The header of a cast; ValueError when the file is not one."""
    with open(path, "rb") as f:
        line = f.readline(1 << 20)
    try:
        fields = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}: not an asciinema cast (no JSON header line)") from None
    if not isinstance(fields, dict) or fields.get("version") != VERSION:
        raise ValueError(f"{path}: not an asciinema v2 cast")
    return Cast(path, fields)


def events(f: IO[bytes]) -> Iterator[tuple[float, str, str]]:
    """The events of an open cast, after its header; a torn last line (a gateway stopped
    mid-write) is left out."""
    f.readline()
    for line in f:
        try:
            seconds, code, text = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        yield float(seconds), str(code), str(text)


def tail_markers(path: Path, window: int = 64 * 1024) -> list[str]:
    """The markers among a cast's last events (how it ended, gaps, cuts), oldest first."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - window))
        data = f.read()
    found = []
    for line in data.split(b"\n")[1:]:  # the header, or a line cut by the window
        if b'"m"' not in line:
            continue
        try:
            _, code, text = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if code == MARKER:
            found.append(str(text))
    return found


def file_name(started: float, session: str) -> str:
    """`<UTC start>-<session>.cast`: sorted by name is sorted by start."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + f"-{session}.cast"


def find(directory: Path, session: str) -> Path | None:
    """The cast of `session` (its id, or a unique prefix of it) in `directory`."""
    if not re.fullmatch(r"[0-9a-f-]{4,64}", session):
        return None
    matches = [
        directory / name
        for name in os.listdir(directory)
        if name.endswith(".cast") and name[17:].startswith(session)
    ]
    return matches[0] if len(matches) == 1 else None
