"""`sh`: `-c SCRIPT` or lines from stdin; `;`, `&&`, `||`, `exit N`, no pipes or expansion."""

from __future__ import annotations

import shlex

from .proc import Proc

_OPERATORS = (";", "&&", "||")


class ShellExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _split(script: str) -> list[str]:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


async def _run_script(p: Proc, script: str, last: int) -> int:
    try:
        tokens = _split(script)
    except ValueError as exc:
        await p.err(f"sh: syntax error: {exc}\n")
        return 2
    command: list[str] = []
    pending = ";"
    for token in [*tokens, ";"]:
        if token not in _OPERATORS and token not in ("|", "&", "|&"):
            command.append(token)
            continue
        if token in ("|", "&", "|&"):
            await p.err(f"sh: '{token}' is not supported by this fake shell\n")
            return 2
        if command and (
            pending == ";" or (pending == "&&" and last == 0) or (pending == "||" and last != 0)
        ):
            last = await _run_one(p, command, last)
        command, pending = [], token
    return last


async def _run_one(p: Proc, argv: list[str], last: int) -> int:
    if argv[0] == "exit":
        try:
            raise ShellExit(int(argv[1]) & 0xFF if len(argv) > 1 else last)
        except ValueError:
            await p.err(f"sh: exit: Illegal number: {argv[1]}\n")
            raise ShellExit(2) from None
    from .commands import lookup  # late: commands imports this module

    if lookup(argv[0]) is None:
        await p.err(f"sh: 1: {argv[0]}: not found\n")
        return 127
    return await p.spawn(argv)


async def sh(p: Proc) -> int:
    args = p.argv[1:]
    try:
        if args[:1] == ["-c"]:
            if len(args) < 2:
                await p.err("sh: -c requires an argument\n")
                return 2
            return await _run_script(p, args[1], 0)
        last = 0
        while line := await p.io.stdin.readline():
            last = await _run_script(p, line.decode(errors="replace"), last)
        return last
    except ShellExit as done:
        return done.code
