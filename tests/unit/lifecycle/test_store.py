"""The SQLite tenant store and the spec model."""

from __future__ import annotations

import json
import sqlite3

import pytest
from pydantic import ValidationError

from gateway.lifecycle.model import (
    TenantSpec,
    TenantStatus,
    loaded_status,
    parse_quota,
    stored_status,
)
from gateway.lifecycle.stores.protocol import Conflict, TenantExists, TenantNotFound
from gateway.lifecycle.stores.sqlite import SQLiteTenantStore


def spec(name="t1", **kw):
    return TenantSpec(name=name, admin_groups=["admins"], **kw)


async def test_records_survive_a_restart_and_writes_are_compare_and_swap(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    created = await store.create(spec())
    assert created.version == 1 and created.generation == 1
    with pytest.raises(TenantExists, match='tenant "t1" already exists'):
        await store.create(spec())
    updated = await store.update_status("t1", TenantStatus(step="x"), created.version)
    assert updated.version == 2 and updated.generation == 1
    with pytest.raises(Conflict):
        await store.update_spec("t1", spec(ha=3), created.version)
    again = await store.update_spec("t1", spec(ha=3), updated.version)
    assert again.generation == 2
    await store.close()
    reopened = SQLiteTenantStore(tmp_path / "t.db")
    record = await reopened.get("t1")
    assert record.spec.ha == 3 and record.status.step == "x" and record.version == 3
    with pytest.raises(TenantNotFound):
        await reopened.get("nope")
    with pytest.raises(TenantNotFound):
        await reopened.delete("nope", 1)
    await reopened.delete("t1", 3)
    assert await reopened.list() == []
    await reopened.close()


async def test_wal_mode_and_private_file(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "t.db").stat().st_mode & 0o077 == 0
    await store.close()


async def test_revision_moves_when_another_connection_writes(tmp_path):
    reader = SQLiteTenantStore(tmp_path / "t.db")
    writer = SQLiteTenantStore(tmp_path / "t.db")
    first = await reader.revision()
    assert await reader.revision() == first
    await writer.create(spec())
    assert await reader.revision() != first
    await reader.close()
    await writer.close()


async def test_activity_is_batched_monotonic_and_keeps_the_version(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    await store.create(spec())
    await store.record_activity({"t1": 100.0, "ghost": 5.0})
    await store.record_activity({"t1": 50.0})
    record = await store.get("t1")
    assert record.last_activity == 100.0 and record.version == 1
    await store.close()


async def test_lease_has_one_holder_until_it_expires(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    assert await store.acquire_lease("m", "a", 30)
    assert not await store.acquire_lease("m", "b", 30)
    assert await store.acquire_lease("m", "a", 30)
    await store.release_lease("m", "a")
    assert await store.acquire_lease("m", "b", -1)  # taken, but already expired
    assert await store.acquire_lease("m", "a", 30)
    await store.close()


@pytest.mark.parametrize(
    ("fields", "where", "says"),
    [
        ({"name": "Bad_Name"}, "name", "DNS label"),
        ({"name": "admin"}, "name", "reserved"),
        ({"name": "kube-x"}, "name", "reserved"),
        ({"admin_groups": []}, "admin_groups", "at least 1"),
        ({"admin_groups": ["system:masters"]}, "admin_groups", "system:"),
        ({"view_groups": ["a", "a"]}, "view_groups", "listed twice"),
        ({"k8s_version": "latest"}, "k8s_version", "not a Kubernetes version like 1.32"),
        ({"ha": 2}, "ha", "odd"),
        ({"quota": {"cpu": "ten"}}, "quota", "quantity"),
    ],
)
def test_every_spec_error_names_its_field(fields, where, says):
    data = {"name": "t1", "admin_groups": ["admins"], **fields}
    with pytest.raises(ValidationError) as info:
        TenantSpec(**data)
    error = info.value.errors()[0]
    assert error["loc"][0] == where
    assert says in error["msg"]


def test_versions_normalise_and_quota_parses():
    assert TenantSpec(name="t1", admin_groups=["a"], k8s_version="v1.31.4").k8s_version == "1.31"
    assert parse_quota("cpu=10, memory=20Gi,pods=50") == {
        "cpu": "10",
        "memory": "20Gi",
        "pods": "50",
    }
    assert parse_quota("requests.cpu=500m") == {"requests.cpu": "500m"}
    for bad in ("cpu", "cpu=", "=5", "cpu=lots", "Bad Key=1"):
        with pytest.raises(ValueError):
            parse_quota(bad)


async def test_revision_moves_on_this_connections_writes_too(tmp_path):
    store = SQLiteTenantStore(tmp_path / "t.db")
    first = await store.revision()
    created = await store.create(spec())
    second = await store.revision()
    assert second != first
    await store.update_status("t1", TenantStatus(step="x"), created.version)
    assert await store.revision() != second
    third = await store.revision()
    assert await store.revision() == third  # nothing written: no change
    await store.close()


#: what the version before error references read in a stored status (its models refuse
#: anything else)
PREVIOUS_STATUS_FIELDS = {
    "phase",
    "step",
    "conditions",
    "last_error",
    "failures",
    "observed_generation",
    "k8s_version",
    "route",
    "hostname",
}
PREVIOUS_CONDITION_FIELDS = {"type", "status", "reason", "message", "last_transition"}


async def test_a_record_without_new_features_is_what_an_older_replica_reads(tmp_path):
    """Fields added to the spec and the route after records were first stored are written
    only when set: a replica of the previous version (its models refuse unknown fields)
    reads every record that does not use them, as it does during a rolling upgrade."""

    from gateway.lifecycle.model import RouteInfo

    store = SQLiteTenantStore(tmp_path / "t.db")
    plain = await store.create(spec("plain"))
    route = RouteInfo(server="https://10.0.0.1", token_file="/t")
    await store.update_status("plain", TenantStatus(route=route), plain.version)
    await store.create(spec("reviewed", token_passthrough=True))
    failing = await store.create(spec("failing"))
    status = TenantStatus(last_error="x: boom", failures=1, error_reference="0123456789")
    await store.update_status("failing", status, failing.version)
    await store.close()
    rows = dict(
        sqlite3.connect(tmp_path / "t.db")
        .execute("SELECT name, spec || status FROM tenants")
        .fetchall()
    )
    for added in ("token_passthrough", "service_account_issuer", "error_reference"):
        assert added not in rows["plain"]
    assert '"token_passthrough":true' in rows["reviewed"]
    # the reference is written on every failed step: never as a field the previous
    # version's status refuses, but as a condition (any type is one every version reads)
    assert "error_reference" not in rows["failing"]
    with sqlite3.connect(tmp_path / "t.db") as db:
        (stored,) = db.execute("SELECT status FROM tenants WHERE name = 'failing'").fetchone()
    stored = json.loads(stored)
    assert set(stored) <= PREVIOUS_STATUS_FIELDS
    assert all(set(c) <= PREVIOUS_CONDITION_FIELDS for c in stored["conditions"])
    assert {
        "type": "ErrorReference",
        "status": "True",
        "reason": "StepFailed",
        "message": "0123456789",
    } in stored["conditions"]
    reopened = SQLiteTenantStore(tmp_path / "t.db")
    assert (await reopened.get("plain")).status.route == route
    assert (await reopened.get("reviewed")).spec.token_passthrough
    assert (await reopened.get("failing")).status == status
    await reopened.close()


async def test_a_failed_status_stored_before_error_references_reads(tmp_path):
    """A status as the version before error references wrote it: a `last_error` and no
    `error_reference`. It reads, with no reference (none is derived from the text)."""
    import json

    store = SQLiteTenantStore(tmp_path / "t.db")
    await store.create(spec("old"))
    await store.close()
    older = {
        "phase": "Provisioning",
        "step": "apiserver",
        "conditions": [],
        "last_error": "apiserver: open /srv/vgate/tenants/old/pki: permission denied",
        "failures": 3,
        "observed_generation": 0,
        "k8s_version": None,
        "route": None,
        "hostname": None,
    }
    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("UPDATE tenants SET status = ? WHERE name = 'old'", (json.dumps(older),))
    reopened = SQLiteTenantStore(tmp_path / "t.db")
    status = (await reopened.get("old")).status
    assert (status.last_error, status.failures) == (older["last_error"], 3)
    assert status.error_reference is None
    await reopened.close()


def test_an_error_reference_is_ten_hex_digits_or_refused():
    with pytest.raises(ValidationError, match="error_reference"):
        TenantStatus.model_validate({"error_reference": "../../etc"})
    stored = stored_status(TenantStatus(last_error="x", error_reference="0123456789"))
    assert loaded_status(stored).error_reference == "0123456789"
    stored["conditions"][-1]["message"] = "../../etc"  # edited in the store by hand
    with pytest.raises(ValidationError, match="error_reference"):
        loaded_status(stored)


async def test_a_record_this_version_cannot_read_is_left_out_not_fatal(tmp_path, caplog):
    """A row written by a newer vgate (a field this one does not know) or damaged: listings
    leave it out with one warning per stored version, the others still list, and reading
    it by name says why. Before, one such row made every listing fail."""
    from gateway.lifecycle.stores.protocol import UnreadableRecord

    store = SQLiteTenantStore(tmp_path / "t.db")
    await store.create(spec("good"))
    await store.create(spec("newer"))
    await store.create(spec("broken"))
    with sqlite3.connect(tmp_path / "t.db") as db:
        (stored,) = db.execute("SELECT spec FROM tenants WHERE name = 'newer'").fetchone()
        newer = {**json.loads(stored), "deny_groups": ["contractors"]}
        db.execute("UPDATE tenants SET spec = ? WHERE name = 'newer'", (json.dumps(newer),))
        db.execute("UPDATE tenants SET status = '{' WHERE name = 'broken'")
    caplog.set_level("WARNING", logger="vgate.lifecycle.store")
    for _ in range(3):
        assert [r.name for r in await store.list()] == ["good"]
        assert [r.name for r in await store.get_many(["broken", "good", "newer"])] == ["good"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per unreadable row, not once per poll
    with pytest.raises(UnreadableRecord) as unreadable:
        await store.get("newer")
    assert "deny_groups: Extra inputs are not permitted" in str(unreadable.value)
    assert 'tenant "newer"' in str(unreadable.value)
    with pytest.raises(UnreadableRecord):
        await store.get("broken")
    assert (await store.get("good")).spec.name == "good"
    await store.close()


async def test_a_locked_or_damaged_file_is_a_store_error_naming_it(tmp_path):
    """Another process holding the file's write lock past the busy timeout, or a file that is
    not a database: `StoreError` with the file and SQLite's reason (the CLI prints it, the
    admin API answers a 503 Status, the manager retries), not `sqlite3.OperationalError`.
    Reads go on under the lock (WAL), and nothing half-written is left once it is gone."""
    from gateway.lifecycle.stores.protocol import StoreError

    store = SQLiteTenantStore(tmp_path / "t.db")
    try:
        record = await store.create(spec("t1"))
        store._db.execute("PRAGMA busy_timeout=100")  # not the 10 s a test would wait
        other = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match=rf"{tmp_path / 't.db'}: database is locked"):
                await store.create(spec("t2"))
            with pytest.raises(StoreError, match="database is locked"):
                await store.update_spec("t1", spec("t1", ha=3), record.version)
            assert (await store.get("t1")).version == record.version
        finally:
            other.rollback()
            other.close()
        assert [r.name for r in await store.list()] == ["t1"]
        assert (await store.update_spec("t1", spec("t1", ha=3), record.version)).version == 2
    finally:
        await store.close()
    (tmp_path / "bad.db").write_bytes(b"not a database, really" * 400)
    with pytest.raises(StoreError, match=rf"{tmp_path / 'bad.db'}: file is not a database"):
        SQLiteTenantStore(tmp_path / "bad.db")
