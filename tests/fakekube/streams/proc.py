"""A running command: its argv, I/O, the pod's filesystem and a way to run sub-commands."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .podfs import PodFilesystem
from .procio import ProcessIO


@dataclass
class Proc:
    argv: list[str]
    io: ProcessIO
    fs: PodFilesystem
    env: dict[str, str] = field(default_factory=dict)
    spawn_fn: Callable[[Proc], Awaitable[int]] | None = None

    async def out(self, text: str | bytes) -> None:
        await self.io.write_out(text.encode() if isinstance(text, str) else text)

    async def err(self, text: str | bytes) -> None:
        await self.io.write_err(text.encode() if isinstance(text, str) else text)

    async def spawn(self, argv: list[str]) -> int:
        """Run another command with the same I/O, filesystem and environment."""
        assert self.spawn_fn is not None
        child = Proc(argv, self.io, self.fs, self.env, self.spawn_fn)
        return await self.spawn_fn(child)
