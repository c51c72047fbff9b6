"""The development OpenID Provider in `deploy/dev-idp/` (npm `oidc-provider`) as a child
process: dependencies installed on first use, started, awaited, stopped."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gateway.private_file import write_private
from gateway.quickstart.first_tenant import QuickstartError
from gateway.quickstart.processes import record

DEV_IDP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "dev-idp"
# it prints `ready` in about a second; the bound only matters when it never does (a machine
# under heavy load can take far longer to load its modules)
START_TIMEOUT = 60.0
NPM_LOCK = ".npm-ci.lock"  # held while `npm ci` fills node_modules


def ensure_node_modules(directory: Path = DEV_IDP_DIR) -> None:
    """`npm ci` once per lockfile (a marker in node_modules holds the lockfile's hash)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise QuickstartError(
            "Node.js (node and npm) is needed for the local OpenID Provider: "
            "install it (Debian: apt-get install nodejs npm)"
        )
    if not (directory / "server.mjs").is_file():
        raise QuickstartError(
            f"{directory} is missing: run vgate from a checkout of its "
            "repository for the local OpenID Provider"
        )
    lock = directory / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()
    marker = directory / "node_modules" / ".vgate-lock-sha256"

    def fresh() -> bool:
        return (
            marker.is_file()
            and marker.read_text().strip() == digest
            and (directory / "node_modules" / "oidc-provider" / "package.json").is_file()
        )

    if fresh():
        return
    # one lock per node_modules, next to it (npm ci writes there anyway, and the lock goes
    # with the checkout): starts from the same checkout wait for each other's `npm ci`, a
    # start from another checkout (a clone, a worktree) does not
    lock_file = directory / NPM_LOCK
    with lock_file.open("w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)  # concurrent starts: one npm ci at a time
        if fresh():
            return
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise QuickstartError(f"npm ci in {directory} failed:\n{proc.stderr[-2000:]}")
        marker.write_text(digest + "\n")


class DevIdP:
    """`node server.mjs --config FILE`, output appended to `log_file`; its pid is recorded in
    `pid_file` (`processes.record`) while it runs."""

    def __init__(
        self, config: dict, config_file: Path, log_file: Path, pid_file: Path | None = None
    ) -> None:
        self.config = config
        self.config_file = config_file
        self.log_file = log_file
        self.pid_file = pid_file
        self.issuer: str = config["issuer"]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DevIdP:
        """Start and wait until it prints `ready <issuer>`; raise `QuickstartError` if not."""
        ensure_node_modules()
        # it holds the portal client's secret
        write_private(self.config_file, json.dumps(self.config, indent=2).encode())
        with self.log_file.open("ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(
                [
                    shutil.which("node") or "node",
                    str(DEV_IDP_DIR / "server.mjs"),
                    "--config",
                    str(self.config_file),
                ],
                cwd=DEV_IDP_DIR,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if self.pid_file is not None:
            record(self.pid_file, self._proc.pid)
        want = f"ready {self.issuer}".encode()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with self.log_file.open("rb") as f:
                f.seek(offset)
                output = f.read()
            if want in output:
                return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        code = self._proc.poll()
        self.stop()
        why = (
            f"exited with status {code}"
            if code is not None
            else f"did not say it was ready within {START_TIMEOUT:.0f} s"
        )
        raise QuickstartError(
            f"the local OpenID Provider ({DEV_IDP_DIR / 'server.mjs'}) {why}; its output "
            f"(all of it is in {self.log_file}):\n{output[-3000:].decode(errors='replace')}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
