"""`workers: N`: the master process forks the workers, restarts one that dies, and shares
what it knows with them.

The master runs no event loop: it waits for signals (`sigtimedwait`) — SIGCHLD (a worker
ended), SIGTERM/SIGINT (stop: forwarded, every worker drains), SIGHUP (forwarded: every
worker reloads) — and otherwise wakes once per `tick_seconds`. A worker that dies is
started again after a backoff (0.5 s, doubling while it keeps dying within
`STABLE_SECONDS` of its start, at most `MAX_BACKOFF_SECONDS`); one whose heartbeat stops
for `HANG_SECONDS` is killed and started again.

`WorkerBoard` is a page of anonymous shared memory created before the first fork: the
master writes each slot's pid and the restart counts, every worker writes its heartbeat.
So any worker can answer `/readyz` and `/metrics` for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("vgate.workers")

BASE_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
STABLE_SECONDS = 10.0  # a worker that lived this long died by accident, not in a loop
HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 10.0  # a heartbeat older than this: the worker cannot serve (readiness)
HANG_SECONDS = 60.0  # ... older than this: the master kills it and starts another
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

_HEAD = struct.Struct("<qqq")  # slots, restarts in total, master pid
_SLOT = struct.Struct("<qqqdd")  # pid (0: down), restarts, last exit code, started, heartbeat


def describe_exit(code: int) -> str:
    """`os.waitstatus_to_exitcode` in words."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"killed by signal {name}"
    return f"exited with code {code}"


class WorkerBoard:
    """Shared between the master and its workers (inherited over fork). Each field has
    one writer; readers may see a value one write old, never a torn one (aligned 8 bytes)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._mem = mmap.mmap(-1, _HEAD.size + _SLOT.size * slots)  # MAP_SHARED|ANONYMOUS
        _HEAD.pack_into(self._mem, 0, slots, 0, os.getpid())

    def _at(self, slot: int) -> int:
        return _HEAD.size + _SLOT.size * slot

    @property
    def master_pid(self) -> int:
        return _HEAD.unpack_from(self._mem, 0)[2]

    @property
    def restarts(self) -> int:
        return _HEAD.unpack_from(self._mem, 0)[1]

    def slot(self, slot: int) -> tuple[int, int, int, float, float]:
        """(pid or 0, restarts, last exit code, started, heartbeat) — monotonic times."""
        return _SLOT.unpack_from(self._mem, self._at(slot))

    def started(self, slot: int, pid: int, *, restart: bool) -> None:
        _, restarts, code, _, _ = self.slot(slot)
        now = time.monotonic()
        _SLOT.pack_into(self._mem, self._at(slot), pid, restarts + restart, code, now, now)
        if restart:
            slots, total, master = _HEAD.unpack_from(self._mem, 0)
            _HEAD.pack_into(self._mem, 0, slots, total + 1, master)

    def ended(self, slot: int, code: int) -> None:
        _, restarts, _, started, beat = self.slot(slot)
        _SLOT.pack_into(self._mem, self._at(slot), 0, restarts, code, started, beat)

    def beat(self, slot: int) -> None:
        """A worker's event loop runs (called by the worker itself)."""
        struct.pack_into("<d", self._mem, self._at(slot) + 32, time.monotonic())

    def running(self) -> int:
        return sum(1 for s in range(self.slots) if self.slot(s)[0])

    def problem(self) -> str | None:
        """Why this gateway runs below its configured capacity now, or None."""
        now = time.monotonic()
        down, stale = [], []
        for s in range(self.slots):
            pid, _, code, _, beat = self.slot(s)
            if not pid:
                down.append(f"worker {s} restarting ({describe_exit(code)})")
            elif now - beat > STALE_SECONDS:
                stale.append(f"worker {s} (pid {pid}) not responding for {now - beat:.0f}s")
        if not down and not stale:
            return None
        running = self.slots - len(down) - len(stale)
        return f"{running} of {self.slots} worker processes serving: " + "; ".join(down + stale)


class BoardCollector(Collector):
    """`vgate_workers_configured`, `vgate_workers_running`, `vgate_worker_restarts_total`,
    the same whichever worker is scraped."""

    def __init__(self, board: WorkerBoard) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "vgate_workers_configured", "Worker processes configured", value=self.board.slots
        )
        yield GaugeMetricFamily(
            "vgate_workers_running", "Worker processes running now", value=self.board.running()
        )
        yield CounterMetricFamily(
            "vgate_worker_restarts",
            "Worker processes the master started again after one died",
            value=self.board.restarts,
        )


class Supervisor:
    """The master of `workers: N`. `run_worker(slot)` runs in each forked child and returns
    its exit code; `tick(forced)` runs in the master every `tick_seconds` and, forced, on
    SIGHUP (it keeps what the next worker starts from up to date)."""

    def __init__(
        self,
        board: WorkerBoard,
        run_worker: Callable[[int], int],
        *,
        tick: Callable[[bool], None] | None = None,
        tick_seconds: float = 1.0,
    ) -> None:
        self.board = board
        self.run_worker = run_worker
        self.tick = tick
        self.tick_seconds = tick_seconds or 1.0
        self.children: dict[int, int] = {}  # pid -> slot
        self._due: dict[int, float] = {}  # slot -> when to start it again (monotonic)
        self._quick_deaths = [0] * board.slots
        self._stopping = False
        self._status = 0

    def run(self) -> int:
        """Start every worker, keep them running until SIGTERM/SIGINT, then wait for all
        to drain; the exit status is the first non-zero one of a worker at shutdown."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for slot in range(self.board.slots):
                self._spawn(slot, restart=False)
            next_tick = time.monotonic() + self.tick_seconds
            while self.children or (not self._stopping and self._due):
                now = time.monotonic()
                wake = min([next_tick, *self._due.values()]) if not self._stopping else now + 1
                info = signal.sigtimedwait(SIGNALS, max(0.0, wake - now))
                if info is not None:
                    self._on_signal(info.si_signo)
                self._reap()
                if self._stopping:
                    continue
                now = time.monotonic()
                for slot, when in list(self._due.items()):
                    if when <= now:
                        del self._due[slot]
                        try:
                            self._spawn(slot, restart=True)
                        except OSError as exc:  # no fork now (EAGAIN, ENOMEM): later
                            self._due[slot] = now + MAX_BACKOFF_SECONDS
                            log.error(
                                "cannot start worker %d: %s; trying again in %.0fs",
                                slot,
                                exc,
                                MAX_BACKOFF_SECONDS,
                            )
                self._kill_hung(now)
                if now >= next_tick:
                    next_tick = now + self.tick_seconds
                    self._tick(False)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        return self._status

    def _spawn(self, slot: int, *, restart: bool) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until its loop handles it
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                code = self.run_worker(slot)
            except BaseException:
                log.exception("worker %d crashed", slot)
            finally:
                os._exit(code)
        self.children[pid] = slot
        self.board.started(slot, pid, restart=restart)

    def _on_signal(self, signo: int) -> None:
        if signo in (signal.SIGTERM, signal.SIGINT):
            if not self._stopping:
                log.info(
                    "%s: stopping %d workers (each drains its connections)",
                    signal.Signals(signo).name,
                    len(self.children),
                )
            self._stopping = True
            self._due.clear()
            self._send(signo)
        elif signo == signal.SIGHUP:
            log.info("SIGHUP: every worker reads the configuration again")
            self._tick(True)
            self._send(signal.SIGHUP)

    def _send(self, signo: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signo)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - self.board.slot(slot)[3]
            self.board.ended(slot, code)
            if self._stopping:
                self._status = self._status or code
                continue
            quick = self._quick_deaths[slot] = (
                self._quick_deaths[slot] + 1 if lived < STABLE_SECONDS else 0
            )
            delay = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2**quick)
            self._due[slot] = time.monotonic() + delay
            log.error(
                "worker %d (pid %d) %s after %.1fs; starting it again in %.1fs "
                "(%d restarts so far)",
                slot,
                pid,
                describe_exit(code),
                lived,
                delay,
                self.board.restarts,
            )

    def _kill_hung(self, now: float) -> None:
        for pid, slot in list(self.children.items()):
            beat = self.board.slot(slot)[4]
            if now - beat > HANG_SECONDS:
                log.error(
                    "worker %d (pid %d) has not run its event loop for %.0fs: killing it",
                    slot,
                    pid,
                    now - beat,
                )
                self.board.beat(slot)  # once: the kill is reported by SIGCHLD
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _tick(self, forced: bool) -> None:
        if self.tick is None:
            return
        try:
            self.tick(forced)
        except Exception:
            log.exception("master: reading the configuration failed")


def heartbeat(board: WorkerBoard, slot: int, on_orphaned: Callable[[], None]) -> Callable[[], None]:
    """What a worker calls every `HEARTBEAT_SECONDS` from its event loop: note that the loop
    runs, and stop (`on_orphaned`) once the master is gone (nobody would restart it)."""
    master = board.master_pid
    told = False

    def beat() -> None:
        nonlocal told
        board.beat(slot)
        if os.getppid() != master and not told:
            told = True
            log.error("worker %d: the master process %d is gone; stopping", slot, master)
            on_orphaned()

    return beat
