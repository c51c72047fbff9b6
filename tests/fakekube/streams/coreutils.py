"""The small utilities a test image has: echo, cat, ls, test, env, stty, sleep, ..."""

from __future__ import annotations

import asyncio
import contextlib

from .podfs import FsError
from .proc import Proc

CHUNK = 32 * 1024


async def echo(p: Proc) -> int:
    args = p.argv[1:]
    newline = True
    if args[:1] == ["-n"]:
        args, newline = args[1:], False
    await p.out(" ".join(args) + ("\n" if newline else ""))
    return 0


async def cat(p: Proc) -> int:
    """`cat` copies stdin to stdout until EOF; `cat FILE...` prints files."""
    if len(p.argv) == 1 or p.argv[1:] == ["-"]:
        while chunk := await p.io.stdin.read(CHUNK):
            await p.out(chunk)
        return 0
    status = 0
    for name in p.argv[1:]:
        try:
            await p.out(p.fs.read(name))
        except FsError as exc:
            await p.err(f"cat: {name}: {exc}\n")
            status = 1
    return status


async def ls(p: Proc) -> int:
    paths = [a for a in p.argv[1:] if not a.startswith("-")] or ["."]
    status = 0
    for path in paths:
        if p.fs.is_file(path):
            await p.out(path + "\n")
            continue
        try:
            names = p.fs.listdir(path)
        except FsError as exc:
            await p.err(f"ls: cannot access '{path}': {exc}\n")
            status = 2
            continue
        if len(paths) > 1:
            await p.out(f"{path}:\n")
        await p.out("".join(name + "\n" for name in names))
    return status


async def test(p: Proc) -> int:
    """`test -d|-e|-f PATH` (also spelled `[ ... ]`)."""
    args = p.argv[1:]
    if p.argv[0] == "[":
        if args[-1:] != ["]"]:
            await p.err("[: missing ']'\n")
            return 2
        args = args[:-1]
    if len(args) != 2 or args[0] not in ("-d", "-e", "-f"):
        return 2 if args else 1
    check = {"-d": p.fs.is_dir, "-f": p.fs.is_file, "-e": lambda x: p.fs.node(x) is not None}
    return 0 if check[args[0]](args[1]) else 1


async def env(p: Proc) -> int:
    await p.out("".join(f"{k}={v}\n" for k, v in p.env.items()))
    return 0


async def whoami(p: Proc) -> int:
    await p.out("root\n")
    return 0


async def hostname(p: Proc) -> int:
    await p.out(p.env.get("HOSTNAME", "localhost") + "\n")
    return 0


async def pwd(p: Proc) -> int:
    await p.out("/\n")
    return 0


async def true(p: Proc) -> int:
    return 0


async def false(p: Proc) -> int:
    return 1


async def sleep(p: Proc) -> int:
    try:
        seconds = float(p.argv[1])
    except (IndexError, ValueError):
        await p.err("sleep: invalid time interval\n")
        return 1
    await asyncio.sleep(seconds)
    return 0


async def stty(p: Proc) -> int:
    """Only `stty size`: the rows and columns the client's resize channel reported."""
    if not p.io.tty:
        await p.err("stty: 'standard input': Inappropriate ioctl for device\n")
        return 1
    if p.argv[1:] != ["size"]:
        await p.err("stty: only 'stty size' is supported here\n")
        return 1
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(p.io.size_known.wait(), 2.0)
    await p.out(f"{p.io.height} {p.io.width}\n")
    return 0


async def seq(p: Proc) -> int:
    """`seq [FIRST [INCREMENT]] LAST`: integers one per line (lots of output, cheaply)."""
    try:
        numbers = [int(a) for a in p.argv[1:]]
    except ValueError:
        await p.err(f"seq: invalid argument: {' '.join(p.argv[1:])!r}\n")
        return 1
    if not 1 <= len(numbers) <= 3 or (len(numbers) == 3 and numbers[1] == 0):
        await p.err("seq: usage: seq [FIRST [INCREMENT]] LAST\n")
        return 1
    first, step, last = (
        (1, 1, numbers[0])
        if len(numbers) == 1
        else ((numbers[0], 1, numbers[1]) if len(numbers) == 2 else tuple(numbers))
    )
    stop = last + (1 if step > 0 else -1)
    batch = 4096
    for start in range(first, stop, step * batch):
        end = start + step * batch
        end = min(end, stop) if step > 0 else max(end, stop)
        await p.out("".join(f"{n}\n" for n in range(start, end, step)))
    return 0


UTILITIES = {
    "echo": echo,
    "cat": cat,
    "ls": ls,
    "test": test,
    "[": test,
    "env": env,
    "whoami": whoami,
    "hostname": hostname,
    "pwd": pwd,
    "true": true,
    "false": false,
    "sleep": sleep,
    "stty": stty,
    "seq": seq,
}
