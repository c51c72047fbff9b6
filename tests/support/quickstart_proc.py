"""`vgate quickstart` run as a person runs it: a child process whose terminal output (stderr)
the test reads line by line; its banner, and the lifecycle state of its tenants."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BANNER_END = "if it was killed:"  # the banner's last line


class Quickstart:
    def __init__(
        self, args: list[str], *, cwd: Path, env: dict[str, str], command: list[str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "gateway", "quickstart"]), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, ""):
            self._queue.put(line)
        self._queue.put(None)

    def _take(self, timeout: float) -> str | None:
        line = self._queue.get(timeout=timeout)
        if line is not None:
            self.lines.append(line)
        return line

    @property
    def output(self) -> str:
        with contextlib.suppress(queue.Empty):
            while self._take(0) is not None:
                pass
        return "".join(self.lines)

    def banner(self, timeout: float = 120) -> str:
        """The banner, once printed; AssertionError with the output if it exits first."""
        deadline = time.monotonic() + timeout
        while not any(BANNER_END in line for line in self.lines):
            try:
                line = self._take(max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no banner in time:\n" + self.output) from None
            assert line is not None, "quickstart exited early:\n" + self.output
        start = max(i for i, line in enumerate(self.lines) if line.rstrip() == "vgate quickstart")
        end = next(i for i, line in enumerate(self.lines) if BANNER_END in line)
        return "".join(self.lines[start : end + 1])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        """Send `sig` and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.output  # noqa: B018 - drain what it printed on its way out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def banner_field(banner: str, name: str) -> str:
    """The text after `name` on its banner line ("try", "portal", ...)."""
    for line in banner.splitlines():
        if line.strip().startswith(name + " "):
            return line.strip()[len(name) :].strip()
    raise AssertionError(f"no {name!r} line in the banner:\n{banner}")


def tenant_status(work: Path, name: str):
    """The tenant's `TenantStatus` in the quickstart's store (None while it is not there)."""
    from gateway.lifecycle.stores.protocol import TenantNotFound
    from gateway.lifecycle.stores.sqlite import SQLiteTenantStore

    if not (work / "tenants.db").exists():
        return None

    async def read():
        store = SQLiteTenantStore(work / "tenants.db")
        try:
            return (await store.get(name)).status
        except TenantNotFound:
            return None
        finally:
            await store.close()

    with ThreadPoolExecutor(1) as pool:  # a thread of its own: callers may run a loop
        return pool.submit(asyncio.run, read()).result()


def tenant_phase(work: Path, name: str) -> str | None:
    """The tenant's phase ("Ready", ...) in the quickstart's store."""
    status = tenant_status(work, name)
    return status.phase.value if status is not None else None


def gone(pid: int) -> bool:
    """No such process any more (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def quickstart_env(home: Path, **extra: str) -> dict[str, str]:
    """A person's environment with its own HOME and no kubeconfig."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "VGATE_CACHE_DIR")}
    return {**env, "HOME": str(home), **extra}


def require_tools(*, browser: bool = False) -> None:
    """Skip (saying why) when the real quickstart cannot run here — the kube-apiserver and
    etcd of $KUBEBUILDER_ASSETS, kubectl, Node.js and npm, git, and with `browser` Chromium
    driven by playwright; with VGATE_REQUIRE_E2E=1 fail instead."""
    import shutil

    from tests.support.chromium import missing
    from tests.support.kube import require_kube
    from tests.support.tiers import tool_missing

    require_kube(kubectl=True)
    for tool, why in (
        ("node", "Node.js runs the quickstart's OpenID Provider"),
        ("npm", "the quickstart's first run installs the IdP with npm"),
        ("git", "the test clones the repository"),
    ):
        if shutil.which(tool) is None:
            tool_missing(f"{tool} is not installed ({why})")
    why = missing() if browser else None
    if why:
        tool_missing(why)
