"""One session's recording: encoded on the event loop, written by the recording thread.

The event loop turns each event into its cast line (a UTF-8 decode and a JSON encode, both
in C) and hands the lines to the thread in batches — once a batch holds `HAND_OVER_BYTES`,
or a flush interval after its first line — so the session never waits for the disk. What
waits is bounded by `buffer_bytes` (lines handed over but not yet written included). When
the disk does not keep up and the bound is reached:

- `best-effort`: the event is dropped; when room returns, a marker says how many bytes are
  missing (``recording gap: …``). The session never waits for the disk.
- `required`: the session is ended (the client's connection is closed) and the cast says
  why. A required recording is a promise that whatever reached the user is on record;
  dropping output would break it silently, and holding the session back would let a slow
  disk stall it.

A write error is handled the same way (best-effort: recording stops, logged once;
required: the session ends). A cast that reaches `max_session_bytes` is cut with a marker
and the session goes on (the size limit is the operator's choice, not a failure). The
last event is a marker with the exit status read from the error channel.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.sessions import cast
from gateway.sessions.sink import SinkFile
from gateway.sessions.writer import RecordingThread
from gateway.streams.channels import MAX_STATUS_BYTES, exit_status

log = logging.getLogger("vgate.sessions")

DEFAULT_SIZE = (80, 24)
END_RESERVE = 4096  # bytes kept free at the end of a cut cast for the closing markers
HAND_OVER_BYTES = 64 * 1024  # a batch this large goes to the thread without waiting


@dataclass(frozen=True, slots=True)
class Limits:
    buffer_bytes: int
    max_session_bytes: int
    flush_seconds: float


class Recording:
    """A `gateway.streams.events.SessionRecord`: terminal events in, one cast out."""

    def __init__(
        self,
        session_id: str,
        meta: dict[str, Any],
        file: SinkFile,
        thread: RecordingThread,
        limits: Limits,
        *,
        required: bool,
        stdin: bool,
        abort: Callable[[str], None],
        peak: Callable[[int], None] | None = None,
        outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.session_id = session_id
        self.meta = meta
        self.required = required
        self.keep_stdin = stdin
        self._file = file
        self._thread = thread
        self._limits = limits
        self._abort = abort
        self._peak = peak
        self._outcome = outcome  # told "recorded" or "stopped" once the session ended
        self._loop = asyncio.get_running_loop()
        self._t0: float | None = None  # loop time of the switch; no events before it
        self._wall0 = time.time()
        self._size: tuple[int, int] | None = None  # the terminal's first size
        self._pending: list[bytes] = []  # cast lines not yet handed to the thread
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._header_sent = False
        self._cast_bytes = 0  # the cast's size once everything taken is written
        self._accepted = 0  # bytes of lines taken (written by the loop only)
        self.written = 0  # bytes of lines the thread is done with (by the thread only)
        self._dropped = 0  # bytes of events dropped since the last gap marker
        self._status = bytearray()
        self._stopped = ""  # why no more events are taken ("" while recording)
        self._capped = False
        self._finished = False
        self._failed = False  # set by the thread: a write failed, nothing more is written
        self._decoders = {
            cast.OUTPUT: codecs.getincrementaldecoder("utf-8")("surrogateescape"),
            cast.INPUT: codecs.getincrementaldecoder("utf-8")("surrogateescape"),
        }
        thread.active.add(session_id)

    # -- gateway.streams.events.SessionRecord, on the event loop ----------------------------

    def started(self, transport: str, protocol: str) -> None:
        self._t0 = self._loop.time()
        self._wall0 = time.time()
        self.meta["tenant_transport"] = transport
        self.meta["tenant_protocol"] = protocol

    def output(self, data: bytes) -> None:
        if self._taking():
            self._add(cast.OUTPUT, self._decoders[cast.OUTPUT].decode(data), len(data))

    def input(self, data: bytes) -> None:
        if self.keep_stdin and self._taking():
            self._add(cast.INPUT, self._decoders[cast.INPUT].decode(data), len(data))

    def resize(self, width: int, height: int) -> None:
        if self._size is None:
            self._size = (width, height)
        if self._taking():
            text = f"{width}x{height}"
            self._add(cast.RESIZE, text, len(text))

    def status(self, data: bytes) -> None:
        room = MAX_STATUS_BYTES - len(self._status)
        if room > 0:
            self._status += data[:room]

    def broken(self, why: str) -> None:
        self._trouble(f"the session's stream could not be followed ({why})")

    def finish(self) -> None:
        """Hand the rest and the closing marker to the thread (once)."""
        if self._finished:
            return
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._t0 is None:  # never switched: no session took place
            self._thread.put(self._discard)
            return
        if self._outcome is not None:
            self._outcome("stopped" if self._stopped else "recorded")
        self._pending.append(cast.event(self._now(), cast.MARKER, self._end_marker()))
        self._hand_over()
        self._thread.put(self._close)

    # -- taking events ---------------------------------------------------------------------

    def _taking(self) -> bool:
        return self._t0 is not None and not (self._stopped or self._capped or self._finished)

    def _now(self) -> float:
        assert self._t0 is not None
        return self._loop.time() - self._t0

    def _add(self, code: str, text: str, raw: int) -> None:
        """Take one event (`raw`: its size as the client saw it, for a gap marker)."""
        if not text:
            return
        now = self._now()
        line = cast.event(now, code, text)
        size = len(line)
        buffered = self._accepted - self.written + size
        if buffered > self._limits.buffer_bytes:
            self._overflow(raw)
            return
        if self._dropped:
            self._line(
                cast.event(
                    now,
                    cast.MARKER,
                    f"recording gap: {self._dropped} bytes not recorded (the disk did not keep up)",
                )
            )
            self._dropped = 0
        if self._cast_bytes + size > self._limits.max_session_bytes - END_RESERVE:
            self._capped = True
            line = cast.event(
                now,
                cast.MARKER,
                "recording cut: the cast reached "
                f"max_session_bytes ({self._limits.max_session_bytes}); the "
                "session went on",
            )
        self._line(line)
        if self._peak is not None:
            self._peak(self._accepted - self.written)
        if self._pending_bytes >= HAND_OVER_BYTES:
            self._hand_over()
        elif self._timer is None:
            self._timer = self._loop.call_later(self._limits.flush_seconds, self._hand_over)

    def _line(self, line: bytes) -> None:
        self._pending.append(line)
        self._pending_bytes += len(line)
        self._cast_bytes += len(line)
        self._accepted += len(line)

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        lines = self._pending
        if not self._header_sent:
            self._header_sent = True
            header = self._header()
            lines.insert(0, header)
            self._cast_bytes += len(header)
            self._accepted += len(header)
        self._pending, self._pending_bytes = [], 0
        blob = b"".join(lines)
        self._thread.put(lambda: self._write(blob))

    def _overflow(self, size: int) -> None:
        if self.required:
            self._trouble("the recording fell behind: the disk did not keep up")
            return
        if not self._dropped:
            log.warning(
                "session %s: recording falls behind, output dropped (best-effort)", self.session_id
            )
        self._dropped += size

    def _trouble(self, why: str) -> None:
        """The recording cannot go on: stop taking events; a required one ends the session."""
        if self._stopped or self._finished:
            return
        self._stopped = why
        if self._t0 is not None:
            self._line(cast.event(self._now(), cast.MARKER, f"recording stopped: {why}"))
        if self.required:
            log.error("session %s ended: %s (recording required)", self.session_id, why)
            self._abort(f"session recording required, {why}")
        else:
            log.warning(
                "session %s: recording stopped: %s (best-effort: the session goes on)",
                self.session_id,
                why,
            )

    def _write_failed(self, why: str) -> None:
        self._trouble(f"the recording could not be written: {why}")

    def _end_marker(self) -> str:
        if self._stopped and self.required:
            return f"exit unknown: ended by the gateway, {self._stopped}"
        status = exit_status(bytes(self._status))
        if status.code is not None:
            return f"exit {status.code}"
        return f"exit unknown: {status.message or 'the session ended without an exit status'}"

    def _header(self) -> bytes:
        meta = self.meta
        width, height = self._size or DEFAULT_SIZE
        command = " ".join(meta.get("command") or []) or meta.get("kind", "")
        title = (
            f"{meta.get('user')} {meta.get('kind')} {meta.get('tenant')}/"
            f"{meta.get('namespace')}/{meta.get('pod')}"
        )
        if meta.get("container"):
            title += f"/{meta['container']}"
        env = {"TERM": "xterm"} if meta.get("tty") else {}
        return cast.header(
            width, height, self._wall0, command=command, title=title, env=env, vgate=meta
        )

    # -- in the recording thread -----------------------------------------------------------

    def _write(self, blob: bytes) -> None:
        try:
            if not self._failed:
                self._file.write(blob)
        except OSError as exc:
            self._failed = True
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is gone
                self._loop.call_soon_threadsafe(self._write_failed, exc.strerror or str(exc))
        finally:
            self.written += len(blob)

    def _close(self) -> None:
        try:
            self._file.finish()
        except OSError as exc:
            log.error("session %s: the recording could not be closed: %s", self.session_id, exc)
        finally:
            self._thread.active.discard(self.session_id)

    def _discard(self) -> None:
        try:
            self._file.discard()
        except OSError as exc:
            log.warning(
                "session %s: an unused recording could not be removed: %s", self.session_id, exc
            )
        finally:
            self._thread.active.discard(self.session_id)
