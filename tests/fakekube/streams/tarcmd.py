"""GNU-tar look-alike over the pod filesystem: what `kubectl cp` runs in both directions."""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass, field

from .podfs import FsError, normalize
from .proc import Proc

CHUNK = 32 * 1024


class TarUsage(Exception):
    pass


@dataclass
class TarOptions:
    mode: str = ""  # c, x or t
    archive: str | None = None
    directory: str = "/"
    members: list[str] = field(default_factory=list)
    gzip: bool = False
    touch: bool = False  # -m: don't restore modification times


_LONG_MODES = {"create": "c", "extract": "x", "get": "x", "list": "t"}


def parse_args(args: list[str]) -> TarOptions:
    """Old-style (`cf -`), short (`-xmf - -C DIR`) and a few long options."""
    opts = TarOptions()
    queue = list(args)
    first = True
    while queue:
        arg = queue.pop(0)
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if name in _LONG_MODES:
                opts.mode = _LONG_MODES[name]
            elif name in ("directory", "file"):
                value = value if eq else queue.pop(0)
                setattr(opts, "directory" if name == "directory" else "archive", value)
            elif name == "gzip":
                opts.gzip = True
            elif name == "touch":
                opts.touch = True
        elif (arg.startswith("-") and len(arg) > 1) or first:
            for letter in arg.lstrip("-"):
                if letter in "cxt":
                    opts.mode = letter
                elif letter in "fC":
                    if not queue:
                        raise TarUsage(f"option requires an argument -- '{letter}'")
                    value = queue.pop(0)
                    setattr(opts, "archive" if letter == "f" else "directory", value)
                elif letter == "z":
                    opts.gzip = True
                elif letter == "m":
                    opts.touch = True
                elif letter not in "vpoh":
                    raise TarUsage(f"invalid option -- '{letter}'")
        else:
            opts.members.append(arg)
        first = False
    if not opts.mode:
        raise TarUsage(
            "You must specify one of the '-Acdtrux', '--delete' or '--test-label' options"
        )
    return opts


async def tar(p: Proc) -> int:
    try:
        opts = parse_args(p.argv[1:])
    except (TarUsage, IndexError) as exc:
        await p.err(f"tar: {exc}\nTry 'tar --help' or 'tar --usage' for more information.\n")
        return 2
    if opts.archive not in (None, "-"):
        await p.err("tar: only '-' (stdin/stdout) archives are supported here\n")
        return 2
    if opts.mode == "c":
        return await _create(p, opts)
    return await _extract(p, opts)


async def _create(p: Proc, opts: TarOptions) -> int:
    if not opts.members:
        await p.err("tar: Cowardly refusing to create an empty archive\n")
        return 2
    buffer = io.BytesIO()
    failed = False
    warned = False
    mode = "w:gz" if opts.gzip else "w"
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.GNU_FORMAT) as archive:
        for member in opts.members:
            root = normalize(member, opts.directory)
            base = member.rstrip("/") or "/"
            if base.startswith("/"):
                if not warned:
                    await p.err("tar: Removing leading `/' from member names\n")
                    warned = True
                base = base.lstrip("/")
            try:
                paths = p.fs.walk(root)
            except FsError as exc:
                await p.err(f"tar: {member}: Cannot stat: {exc}\n")
                failed = True
                continue
            for path in paths:
                _add(archive, p, path, (base + path[len(root) :]).lstrip("/") or ".")
    await _write_chunks(p, buffer.getvalue())
    if failed:
        await p.err("tar: Exiting with failure status due to previous errors\n")
        return 2
    return 0


def _add(archive: tarfile.TarFile, p: Proc, path: str, name: str) -> None:
    node = p.fs.node(path)
    assert node is not None
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = node.mode, int(node.mtime)
    info.uname = info.gname = "root"
    if node.is_dir:
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    else:
        info.size = len(node.data)
        archive.addfile(info, io.BytesIO(node.data))


async def _write_chunks(p: Proc, data: bytes) -> None:
    for start in range(0, len(data), CHUNK):
        await p.out(data[start : start + CHUNK])


async def _extract(p: Proc, opts: TarOptions) -> int:
    target = normalize(opts.directory)
    if not p.fs.is_dir(target):
        await p.err(
            f"tar: {opts.directory}: Cannot open: No such file or directory\n"
            "tar: Error is not recoverable: exiting now\n"
        )
        return 2
    data = await p.io.stdin.read()
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115
    except tarfile.TarError:
        await p.err("tar: This does not look like a tar archive\n")
        return 2
    with archive:
        for member in archive:
            path = normalize(member.name.lstrip("/"), target)
            if opts.mode == "t":
                await p.out(member.name + "\n")
            elif member.isdir():
                p.fs.mkdir(path, mode=member.mode or 0o755)
            elif member.isreg():
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted else b""
                p.fs.mkdir(normalize("..", path))
                mtime = time.time() if opts.touch else member.mtime
                p.fs.write(path, content, member.mode or 0o644, mtime)
    return 0
