"""The `helm` binary behind an interface: install/upgrade, status, values, uninstall."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import tempfile
from typing import Any, Protocol

import yaml

MAX_OUTPUT = 4 << 20


class HelmError(Exception):
    """helm failed; the message carries its stderr (trimmed)."""


class HelmNotFound(HelmError):
    def __init__(self, binary: str) -> None:
        super().__init__(
            f"the helm binary {binary!r} was not found on PATH: install Helm 3 or set "
            "lifecycle.helm.binary to its path"
        )


class HelmRelease(Protocol):
    async def status(self, release: str, namespace: str) -> dict[str, Any] | None:
        """`{"status": "deployed", "chart_version": "...", "values": {...}}` (and
        `deployed_at`, seconds, when helm tells) or None."""

    async def upgrade_install(
        self,
        release: str,
        namespace: str,
        chart: str,
        version: str | None,
        values: dict[str, Any],
        repo: str | None,
    ) -> None: ...

    async def uninstall(self, release: str, namespace: str) -> None: ...

    async def rollback(self, release: str, namespace: str) -> None:
        """Back to the release's previous revision."""


def _epoch(when: Any) -> float | None:
    """`deployedAt` of `helm get metadata` (RFC 3339) as seconds, or None."""
    if not isinstance(when, str):
        return None
    try:
        return dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class HelmRunner:
    """Runs helm as a subprocess (no shell). `kubeconfig` None means in-cluster/$KUBECONFIG."""

    def __init__(
        self, binary: str = "helm", *, kubeconfig: str | None = None, timeout: float = 600.0
    ) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.timeout = timeout

    def _resolve(self) -> str:
        path = shutil.which(self.binary)
        if path is None:
            raise HelmNotFound(self.binary)
        return path

    async def _run(self, *args: str) -> tuple[int, str, str]:
        argv = [self._resolve(), *args]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise HelmError(f"helm {args[0]} timed out after {self.timeout:.0f}s") from None
        return proc.returncode or 0, out[:MAX_OUTPUT].decode(), err[:MAX_OUTPUT].decode()

    async def status(self, release, namespace):
        # `helm get metadata` (Helm >= 3.13) names the chart version in Helm 3 and 4 alike;
        # `helm status -o json` lost it in Helm 4 (and lists every object of the release)
        code, out, err = await self._run("get", "metadata", release, "-n", namespace, "-o", "json")
        if code != 0:
            if "not found" in err.lower():
                return None
            raise HelmError(f"helm get metadata {release}: {err.strip()[-500:]}")
        info = json.loads(out)
        code, out, err = await self._run("get", "values", release, "-n", namespace, "-o", "json")
        if code != 0:
            raise HelmError(f"helm get values {release}: {err.strip()[-500:]}")
        return {
            "status": info.get("status"),
            "chart_version": info.get("version"),
            "values": json.loads(out) or {},
            "deployed_at": _epoch(info.get("deployedAt")),
        }

    async def upgrade_install(self, release, namespace, chart, version, values, repo):
        fd, path = tempfile.mkstemp(prefix="vgate-values-", suffix=".yaml")
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(values, f)
            args = [
                "upgrade",
                "--install",
                release,
                chart,
                "-n",
                namespace,
                "--values",
                path,
                "--reset-values",
            ]
            if version:
                args += ["--version", version]
            if repo:
                args += ["--repo", repo]
            code, _, err = await self._run(*args)
        finally:
            os.unlink(path)
        if code != 0:
            raise HelmError(f"helm upgrade --install {release}: {err.strip()[-500:]}")

    async def uninstall(self, release, namespace):
        code, _, err = await self._run("uninstall", release, "-n", namespace)
        if code != 0 and "not found" not in err.lower():
            raise HelmError(f"helm uninstall {release}: {err.strip()[-500:]}")

    async def rollback(self, release, namespace):
        code, _, err = await self._run("rollback", release, "-n", namespace)
        if code != 0:
            raise HelmError(f"helm rollback {release}: {err.strip()[-500:]}")
