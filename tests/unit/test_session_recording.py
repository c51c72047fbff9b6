"""Session recording (`gateway.sessions`) below the request path: the policy, what a
recording does when the disk is slow or fails, the cut at the size limit, the directory's
rotation and refusals, and `vgate sessions play`. A sink that blocks or fails stands in for
a slow or broken disk (the fault injected); everything else is the real code."""

from __future__ import annotations

import asyncio
import codecs
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.model import SessionRecording
from gateway.sessions import cast
from gateway.sessions.cli import play
from gateway.sessions.policy import RecordingPolicy
from gateway.sessions.recording import Limits, Recording
from gateway.sessions.sink import CastFile, DirectorySink, RecordingUnavailable
from gateway.sessions.writer import RecordingThread

STATUS_EXIT_3 = json.dumps(
    {
        "status": "Failure",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
).encode()


def test_policy_tenant_replaces_roles_only_tighten() -> None:
    config = SessionRecording(
        mode="best-effort",
        tenants={"sandbox": {"mode": "off"}, "prod": {"mode": "required", "stdin": "never"}},
        roles={"cluster-admin": {"mode": "required", "stdin": "always"}, "view": {"mode": "off"}},
    )
    policy = RecordingPolicy(config)

    def decide(tenant: str, *roles: str) -> tuple[str, str]:
        decision = policy.decide(tenant, roles)
        return decision.mode, decision.stdin

    assert decide("dev", "view") == ("best-effort", "tty")  # a role cannot relax
    assert decide("sandbox")[0] == "off"
    assert decide("sandbox", "cluster-admin") == ("required", "always")
    assert decide("prod", "view") == ("required", "never")
    decision = policy.decide("dev", ())
    assert decision.keeps_stdin(tty=True) and not decision.keeps_stdin(tty=False)
    assert not SessionRecording().enabled
    assert SessionRecording(roles={"x": {"mode": "required"}}).enabled


class SlowFile:
    """A sink file whose writes wait for `go` (a disk that does not keep up), or fail."""

    def __init__(self, fail: bool = False) -> None:
        self.go = threading.Event()
        self.fail = fail
        self.data = bytearray()
        self.finished = self.discarded = False

    def write(self, data: bytes) -> None:
        self.go.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.data += data

    def finish(self) -> None:
        self.finished = True

    def discard(self) -> None:
        self.discarded = True


class Sink:
    def __init__(self, file: SlowFile) -> None:
        self.file = file

    def open(self, session: str, started: float) -> SlowFile:
        return self.file

    def maintain(self, active: set[str]) -> None:
        return None


def recording(
    file: SlowFile,
    *,
    required: bool,
    aborted: list[str],
    stdin: bool = True,
    buffer: int = 64 << 10,
    max_bytes: int = 1 << 20,
) -> tuple[Recording, RecordingThread]:
    thread = RecordingThread(Sink(file))  # type: ignore[arg-type]
    thread.start()
    meta = {
        "session": "s1",
        "user": "alice",
        "tenant": "t",
        "namespace": "ns",
        "pod": "p",
        "kind": "exec",
        "command": ["sh"],
        "tty": True,
    }
    rec = Recording(
        "s1",
        meta,
        file,
        thread,
        Limits(buffer, max_bytes, 0.05),
        required=required,
        stdin=stdin,
        abort=aborted.append,
    )
    rec.started("spdy", "v4.channel.k8s.io")
    return rec, thread


def lines(file: SlowFile) -> tuple[dict, list[list]]:
    text = bytes(file.data).decode().splitlines()
    return json.loads(text[0]), [json.loads(line) for line in text[1:]]


async def test_a_slow_disk_best_effort_drops_and_marks_the_gap() -> None:
    file, aborted = SlowFile(), []
    rec, thread = recording(file, required=False, aborted=aborted)
    chunk = b"x" * 4096
    started = time.monotonic()
    for _ in range(200):  # 800 KiB while the disk writes nothing: never waits
        rec.output(chunk)
    assert time.monotonic() - started < 0.5
    file.go.set()
    await asyncio.sleep(0.3)  # the disk caught up: room again
    rec.output(b"after")
    rec.status(STATUS_EXIT_3)
    rec.finish()
    await asyncio.to_thread(thread.close)
    header, events = lines(file)
    assert header["vgate"]["tenant_transport"] == "spdy" and not aborted
    kept = sum(len(e[2]) for e in events if e[1] == "o" and e[2] != "after")
    gap = next(e[2] for e in events if e[1] == "m" and e[2].startswith("recording gap"))
    missing = int(gap.split()[2])
    assert kept + missing == 200 * 4096 and 0 < kept < 100 * 4096
    assert [e[2] for e in events if e[1] == "o"][-1] == "after"
    assert events[-1][1:] == ["m", "exit 3"] and file.finished


async def test_a_slow_disk_ends_a_required_session() -> None:
    file, aborted = SlowFile(), []
    rec, thread = recording(file, required=True, aborted=aborted)
    for _ in range(200):
        rec.output(b"y" * 4096)
    assert aborted == [
        "session recording required, the recording fell behind: the disk did not keep up"
    ]
    rec.finish()
    file.go.set()
    await asyncio.to_thread(thread.close)
    _, events = lines(file)
    assert events[-2][2] == "recording stopped: the recording fell behind: the disk did not keep up"
    assert events[-1][2].startswith("exit unknown: ended by the gateway")


@pytest.mark.parametrize("required", [True, False])
async def test_a_failing_disk(required: bool) -> None:
    file, aborted = SlowFile(fail=True), []
    file.go.set()
    rec, thread = recording(file, required=required, aborted=aborted, buffer=1 << 20)
    rec.output(b"z" * 70_000)  # over the hand-over size: written (and failing) at once
    await asyncio.sleep(0.3)
    assert bool(aborted) is required
    assert rec._stopped.startswith("the recording could not be written: No space left")
    rec.finish()
    await asyncio.to_thread(thread.close)
    assert file.finished


async def test_the_size_limit_cuts_the_cast_and_the_session_goes_on() -> None:
    file, aborted = SlowFile(), []
    file.go.set()
    rec, thread = recording(
        file, required=True, aborted=aborted, max_bytes=64 << 10, buffer=1 << 20
    )
    for i in range(2000):
        rec.output(b"line %d\r\n" % i)
        rec.input(b"k")
    rec.resize(100, 30)
    rec.status(b'{"metadata":{},"status":"Success"}')
    rec.finish()
    await asyncio.to_thread(thread.close)
    assert not aborted and len(file.data) <= 64 << 10
    _, events = lines(file)
    assert events[-2][2].startswith("recording cut: the cast reached max_session_bytes (65536)")
    assert events[-1][2] == "exit 0"
    assert {e[1] for e in events} == {"o", "i", "m"}  # nothing after the cut but the end


async def test_stdin_is_left_out_when_not_kept_and_an_unstarted_session_leaves_nothing() -> None:
    file, aborted = SlowFile(), []
    file.go.set()
    rec, thread = recording(file, required=False, aborted=aborted, stdin=False)
    rec.input(b"secret\n")
    rec.output("é\u2603".encode()[:3])  # a character split across reads
    rec.output("é\u2603".encode()[3:])
    rec.finish()
    await asyncio.to_thread(thread.close)
    _, events = lines(file)
    assert [e[1:] for e in events[:-1]] == [["o", "é"], ["o", "\u2603"]]
    unstarted = SlowFile()
    thread = RecordingThread(Sink(unstarted))  # type: ignore[arg-type]
    thread.start()
    Recording(
        "s2",
        {},
        unstarted,
        thread,
        Limits(1 << 16, 1 << 20, 0.05),
        required=True,
        stdin=True,
        abort=aborted.append,
    ).finish()
    await asyncio.to_thread(thread.close)
    assert unstarted.discarded and not unstarted.data


def test_directory_sink_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RecordingUnavailable, match="Not a directory"):
        DirectorySink(
            blocker / "casts", max_directory_bytes=1 << 30, max_age_seconds=86400, min_free_bytes=0
        ).open("s", time.time())
    with pytest.raises(RecordingUnavailable, match="MiB free, less than"):
        DirectorySink(
            tmp_path / "casts",
            max_directory_bytes=1 << 30,
            max_age_seconds=86400,
            min_free_bytes=1 << 60,
        ).open("s", time.time())
    sink = DirectorySink(
        tmp_path / "casts", max_directory_bytes=1 << 30, max_age_seconds=86400, min_free_bytes=0
    )
    file = sink.open("abc-1", time.time())
    assert isinstance(file, CastFile)
    assert oct(file.path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "casts").stat().st_mode & 0o777) == "0o700"
    file.discard()
    assert not file.path.exists()


def test_rotation_by_age_then_size_spares_active_sessions(tmp_path: Path) -> None:
    sink = DirectorySink(
        tmp_path, max_directory_bytes=3000, max_age_seconds=86400, min_free_bytes=0
    )
    now = time.time()
    ages = {"old": 2 * 86400, "a": 3 * 3600, "b": 2 * 3600, "c": 1.5 * 3600, "fresh": 60}
    for name, age in ages.items():
        path = tmp_path / cast.file_name(now - age, name)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
    sink.maintain(active={"a"})
    left = sorted(p.name[17:-5] for p in tmp_path.glob("*.cast"))
    # "old" is past the age; then the oldest inactive go until 3000 bytes remain
    assert left == ["a", "c", "fresh"]


def test_play_keeps_bytes_and_timing(tmp_path: Path) -> None:
    path = tmp_path / "x.cast"
    raw = b"\x1b[1mbold\x1b[0m \xff\xfe binary\r\n"
    text = raw.decode("utf-8", "surrogateescape")
    path.write_bytes(
        cast.header(80, 24, 0, command="sh", title="t", env={}, vgate={})
        + cast.event(0.5, "o", text[:10])
        + cast.event(0.6, "i", "typed")
        + cast.event(3.5, "o", text[10:])
        + cast.event(4.0, "m", "exit 0")
    )
    out, pauses = io.BytesIO(), []
    play(path, out, speed=2.0, max_wait=1.0, sleep=pauses.append)
    assert out.getvalue() == raw
    assert pauses == [0.25, 1.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_any_output_bytes_survive_the_cast_exactly(chunks: list[bytes]) -> None:
    """Whatever bytes pass (split anywhere, UTF-8 or not), the cast line is valid JSON in
    ASCII or UTF-8, and `raw` of the decoded texts gives the same bytes back."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    texts = [decoder.decode(chunk) for chunk in chunks] + [decoder.decode(b"", final=True)]
    lines = [cast.event(1.0, "o", text) for text in texts]
    for line in lines:
        line.decode("utf-8")  # never invalid UTF-8 in the file
    assert b"".join(cast.raw(json.loads(line)[2]) for line in lines) == b"".join(chunks)


def test_an_unquoted_off_is_the_mode_off() -> None:
    """YAML 1.1 reads `mode: off` as false; the config reads it as the mode `off`."""
    import yaml

    from gateway.config.model import GatewayConfig

    config = GatewayConfig.model_validate(
        yaml.safe_load(
            "oidc: {issuers: [{issuer: 'https://idp.example.com', audiences: [vgate]}]}\n"
            "sessions: {recording: {mode: off, tenants: {prod: {mode: required}},"
            " roles: {view: {mode: off}}}}\n"
        )
    )
    recording = config.sessions.recording
    assert recording.mode == "off" and recording.roles["view"].mode == "off"
    assert recording.enabled  # prod requires it
