"""argv → command: the executables present in the fake container image."""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable

from .coreutils import UTILITIES
from .proc import Proc
from .shell import sh
from .tarcmd import tar

Command = Callable[[Proc], Awaitable[int]]

COMMANDS: dict[str, Command] = {**UTILITIES, "sh": sh, "tar": tar}


def lookup(name: str) -> Command | None:
    """`/bin/sh` and `sh` both find the shell."""
    return COMMANDS.get(posixpath.basename(name) if "/" in name else name)


async def run(p: Proc) -> int:
    """Run argv; an unknown executable fails like the container runtime reports it."""
    command = lookup(p.argv[0]) if p.argv else None
    if command is None:
        name = p.argv[0] if p.argv else ""
        await p.err(
            "OCI runtime exec failed: exec failed: unable to start container process: "
            f'exec: "{name}": executable file not found in $PATH: unknown\n'
        )
        return 126
    return await command(p) & 0xFF
