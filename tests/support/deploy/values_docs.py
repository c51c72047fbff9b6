"""Every key of a values.yaml is documented by a comment above it or beside it."""

from __future__ import annotations

import re

KEY_LINE = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


def undocumented_keys(text: str, *, leaves_only: bool = False) -> list[str]:
    """Keys with neither a comment line right above nor a trailing comment. With
    `leaves_only`, keys that only open a nested block need no comment of their own."""
    missing = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if not m or line.lstrip().startswith("#"):
            continue
        if "#" in m["rest"] or (leaves_only and not m["rest"].strip()):
            continue
        above = lines[number - 1].strip() if number else ""
        if above.startswith("#"):
            continue
        missing.append(f"values.yaml:{number + 1}: {m['key']}")
    return missing
