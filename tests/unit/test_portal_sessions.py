"""The portal's list of signed-out sessions: shared by processes, bounded, fail closed."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from gateway.portal.sessions import SessionStoreError, SignedOutSessions


def _sign_out_in_another_process(path: str, sid: str, done) -> None:
    store = SignedOutSessions(Path(path), max_entries=100)
    asyncio.run(store.sign_out(sid, time.time() + 600))
    done.set()


def test_a_sign_out_in_one_process_is_seen_by_another_at_once(tmp_path):
    """Gateway workers are forked processes: the one that did not handle the sign-out must
    refuse the session on its very next request."""
    path = tmp_path / "sessions.db"
    here = SignedOutSessions(path, max_entries=100)
    issued = time.time()
    assert not asyncio.run(here.is_signed_out("sid-1", issued))  # the connection is open
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    proc = ctx.Process(target=_sign_out_in_another_process, args=(str(path), "sid-1", done))
    proc.start()
    assert done.wait(60)
    proc.join(30)
    assert proc.exitcode == 0
    assert asyncio.run(here.is_signed_out("sid-1", issued))
    assert not asyncio.run(here.is_signed_out("sid-2", issued))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_forked_worker_opens_its_own_connection(tmp_path):
    store = SignedOutSessions(tmp_path / "s.db", max_entries=100)
    asyncio.run(store.sign_out("before-fork", time.time() + 600))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: like `vgate serve`'s workers, forked after the portal was built
        try:
            ok = asyncio.run(store.is_signed_out("before-fork", time.time() - 1))
            asyncio.run(store.sign_out("in-child", time.time() + 600))
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert asyncio.run(store.is_signed_out("in-child", time.time() - 1))


def test_entries_last_until_the_session_would_end_anyway(tmp_path):
    store = SignedOutSessions(tmp_path / "s.db", max_entries=100)
    asyncio.run(store.sign_out("short", time.time() + 0.3))
    asyncio.run(store.sign_out("long", time.time() + 600))
    assert asyncio.run(store.is_signed_out("short", 0))
    time.sleep(0.4)
    # past its end the cookie is refused for its age already; the entry may go
    assert not asyncio.run(store.is_signed_out("short", 0))
    asyncio.run(store.sign_out("next", time.time() + 600))  # purges expired entries
    assert store.count() == 2


def test_the_list_is_bounded_and_overflow_signs_everyone_out(tmp_path):
    """At the bound, no sign-out is forgotten: every session issued so far is refused."""
    store = SignedOutSessions(tmp_path / "s.db", max_entries=10)
    issued_before = time.time()
    for i in range(10):
        asyncio.run(store.sign_out(f"s{i}", time.time() + 600))
    assert store.count() == 10
    asyncio.run(store.sign_out("s10", time.time() + 600))
    assert store.count() == 0
    for sid in ("s0", "s9", "s10", "never-signed-out"):
        assert asyncio.run(store.is_signed_out(sid, issued_before)), sid
    time.sleep(0.01)
    assert not asyncio.run(store.is_signed_out("new-session", time.time()))
    for i in range(25):
        asyncio.run(store.sign_out(f"t{i}", time.time() + 600))
    assert store.count() <= 10


def test_an_unusable_file_fails_closed(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(SessionStoreError, match=r"portal\.session_store_file"):
        SignedOutSessions(blocker / "s.db", max_entries=10)
    path = tmp_path / "s.db"
    store = SignedOutSessions(path, max_entries=10)
    assert store._db is not None
    store._db.close()  # the file's connection is gone: a check cannot be answered
    with pytest.raises(SessionStoreError):
        asyncio.run(store.is_signed_out("x", time.time()))
