"""`vgate serve` as a real process (its workers forked), for tests of the whole command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


class ServedGateway:
    """Starts `python -m gateway serve --config <file>` and waits until `workers` workers
    say they listen; `port` and `url` are theirs. Use as a context manager (SIGTERM on exit).

    The gateway is this checkout's, or with `checkout` the one in that tree (its working
    directory and all of PYTHONPATH: e.g. a compiled copy, loadtests/bench/compiled.py)."""

    def __init__(
        self,
        config_file: Path,
        *,
        workers: int = 1,
        timeout: float = 20.0,
        checkout: Path | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(config_file)],
            cwd=checkout or ROOT,
            env=None if checkout is None else {**os.environ, "PYTHONPATH": str(checkout)},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        ports: set[tuple[int, int]] = set()
        deadline = time.monotonic() + timeout
        while len(ports) < workers and time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                found = re.search(r"vgate listening on [\d.]+:(\d+) \(pid (\d+)\)", line)
                if found:
                    ports.add((int(found.group(1)), int(found.group(2))))
            time.sleep(0.05)
        if len(ports) < workers:
            self.stop()
            raise AssertionError("workers did not start:\n" + "".join(self.lines[-30:]))
        self.port = next(iter(ports))[0]
        tls = (yaml.safe_load(config_file.read_text()) or {}).get("tls")
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def _drain(self) -> None:  # a full stderr pipe would block the workers' logging
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, ""):
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def __enter__(self) -> ServedGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
