"""The container side of exec and attach: run the process, turn its exit into a Status."""

from __future__ import annotations

import asyncio
from typing import Any

from . import commands, status
from .podfs import FilesystemRegistry
from .proc import Proc
from .procio import ProcessIO
from .request import StreamRequest
from .tasks import cancel_all

SIGINT_EXIT = 130


def environment(req: StreamRequest, tty: bool) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": req.pod,
        "HOME": "/root",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    if tty:
        env["TERM"] = "xterm"
    return env


async def main_process(p: Proc) -> int:
    """What `attach` reaches: the container's main process echoes stdin lines to stdout."""
    if not p.io.has_stdin:
        await asyncio.Event().wait()  # runs until the client detaches
    while line := await p.io.stdin.readline():
        await p.out(line)
    return 0


async def run_session(
    req: StreamRequest, io: ProcessIO, files: FilesystemRegistry
) -> dict[str, Any]:
    """Run the command (exec) or the main process (attach); ^C on a tty ends it with 130."""
    argv = req.params("command") if req.kind == "exec" else None
    fs = files.get(req.namespace, req.pod)
    p = Proc(argv or [], io, fs, environment(req, io.tty), commands.run)
    work = asyncio.create_task(commands.run(p) if argv is not None else main_process(p))
    interrupt = asyncio.create_task(io.interrupted.wait())
    try:
        await asyncio.wait({work, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        code = work.result() if work.done() else SIGINT_EXIT
    finally:
        await cancel_all(work, interrupt)
    return status.exit_code(code, argv)
