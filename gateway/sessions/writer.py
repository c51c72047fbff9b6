"""The one thread per process that writes casts, so that no disk write ever runs on the
event loop. It runs jobs in the order they were queued (a recording's batches stay in
order) and, between jobs, the sink's housekeeping at most every `maintain_seconds`."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from gateway.sessions.sink import SessionSink

log = logging.getLogger("vgate.sessions")

Job = Callable[[], None]


class RecordingThread:
    """Runs recording jobs off the event loop. `active` holds the sessions being written
    (the sink's rotation leaves them alone)."""

    def __init__(self, sink: SessionSink, *, maintain_seconds: float = 60.0) -> None:
        self.sink = sink
        self.maintain_seconds = maintain_seconds
        self.active: set[str] = set()
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._maintained = 0.0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="vgate-recordings", daemon=True)
            self._thread.start()

    def put(self, job: Job) -> None:
        """Queue `job` (a call that may block on the disk)."""
        self._jobs.put(job)

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop (waiting at most `timeout` seconds)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "session recordings: writes still pending after %.0f s at shutdown", timeout
                )
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.maintain_seconds)
            except queue.Empty:
                self._maintain()  # nothing queued for a while: housekeeping only
                continue
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("session recordings: a write job failed")
            if time.monotonic() - self._maintained >= self.maintain_seconds:
                self._maintain()

    def _maintain(self) -> None:
        self._maintained = time.monotonic()
        try:
            self.sink.maintain(set(self.active))
        except Exception:
            log.exception("session recordings: housekeeping failed")
