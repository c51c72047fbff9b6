"""The container process's side of a session: stdin in, stdout/stderr out, terminal state."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from .terminal import LineDiscipline, onlcr

Writer = Callable[[bytes], Awaitable[None]]


class ProcessIO:
    """Transports push the client's bytes in with `feed_stdin`; commands read `stdin`."""

    def __init__(self, *, out: Writer, err: Writer | None, tty: bool, has_stdin: bool) -> None:
        self.stdin = asyncio.StreamReader()
        self.tty = tty
        self.has_stdin = has_stdin
        self.width = 0
        self.height = 0
        self.size_known = asyncio.Event()
        self.interrupted = asyncio.Event()
        self._out = out
        self._err = err
        self._line = LineDiscipline() if tty else None
        self._stdin_closed = False
        if not has_stdin:
            self.close_stdin()

    async def feed_stdin(self, data: bytes) -> None:
        """Client keystrokes/bytes; through the line discipline when a tty was asked for."""
        if self._stdin_closed or not data:
            return
        if self._line is None:
            self.stdin.feed_data(data)
            return
        cooked = self._line.feed(data)
        if cooked.echo:
            await self._out(cooked.echo)
        for line in cooked.lines:
            self.stdin.feed_data(line)
        if cooked.interrupt:
            self.interrupted.set()
        if cooked.eof:
            self.close_stdin()

    def close_stdin(self) -> None:
        """The client half-closed stdin (or never had one): the process sees EOF."""
        if not self._stdin_closed:
            self._stdin_closed = True
            self.stdin.feed_eof()

    def resize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.size_known.set()

    async def write_out(self, data: bytes) -> None:
        if data:
            await self._out(onlcr(data) if self.tty else data)

    async def write_err(self, data: bytes) -> None:
        """stderr; merged into stdout on a tty, as a real terminal does."""
        if self.tty or self._err is None:
            await self.write_out(data)
        elif data:
            await self._err(data)
