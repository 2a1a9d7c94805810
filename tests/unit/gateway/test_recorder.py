"""The Recorder batches by time: under a steady load, one write per interval, not one per wake-up."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from spanfaas.gateway.recorder import Enqueuer, Recorder
from spanfaas.model import InvocationRecord
from spanfaas.store import RecordRefused, SQLiteStore, Store


class SlowStore:
    """Counts writes; each takes a few ms, as a real commit does."""

    def __init__(self, delay: float = 0.003, fail: int = 0) -> None:
        self.delay = delay
        self.fail = fail
        self.writes: list[int] = []
        self.rows: dict[str, InvocationRecord] = {}
        self.threads: set[str] = set()

    def save_invocations(self, records: Sequence[InvocationRecord]) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise OSError("disk on fire")
        self.writes.append(len(records))
        for r in records:
            self.rows[r.id] = r


def record(i: int, status: str = "succeeded") -> InvocationRecord:
    return InvocationRecord(id=f"inv-{i}", function="f", status=status, created_at=0.0)  # type: ignore[arg-type]


async def test_steady_load_writes_once_per_interval() -> None:
    store = SlowStore()
    rec = Recorder(store, interval=0.05)  # type: ignore[arg-type]
    rec.start()
    try:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 0.5:  # ~0.5 s of calls, one every ~0.2 ms
            rec.add(record(i))
            i += 1
            await asyncio.sleep(0.0002)
        await rec.flush()
        elapsed = time.monotonic() - t0
    finally:
        await rec.close()
    assert len(store.rows) == i
    # One transaction per interval (not one per write that finished while calls kept coming).
    assert len(store.writes) <= elapsed / 0.05 + 2, store.writes
    assert store.threads == {"spanfaas-recorder_0"}  # one thread: one warm connection


async def test_flush_waits_for_what_was_added_and_get_sees_pending() -> None:
    store = SlowStore(delay=0.01)
    rec = Recorder(store, interval=0.05)  # type: ignore[arg-type]
    rec.start()
    try:
        rec.add(record(1))
        assert rec.get("inv-1") is not None
        rec.add(record(1, "failed"))  # a newer version of the same record wins
        await rec.flush()
        assert store.rows["inv-1"].status == "failed"
        await rec.flush()  # nothing pending: returns at once
    finally:
        await rec.close()


async def test_store_failure_keeps_records_and_retries() -> None:
    store = SlowStore(fail=1)
    rec = Recorder(store, interval=0.01)  # type: ignore[arg-type]
    rec.start()
    try:
        rec.add(record(1))
        await asyncio.wait_for(rec.flush(), 5)
        assert "inv-1" in store.rows
    finally:
        await rec.close()


async def test_close_writes_everything_left() -> None:
    store = SlowStore(delay=0.02)
    rec = Recorder(store, interval=0.01, max_batch=3)  # type: ignore[arg-type]
    rec.start()
    for i in range(10):
        rec.add(record(i))
    await asyncio.sleep(0.015)  # close while the first chunk is being written
    await rec.close()
    assert len(store.rows) == 10


# -- records the store refuses, and store failures, on the real stores ------------------------




def unencodable(i: int) -> InvocationRecord:
    """Logs holding a lone surrogate, which neither sqlite3 nor psycopg can encode: what
    Python makes of a file name that is not UTF-8 (``os.fsdecode``), or of ``"\\udcff"`` in
    JSON (a remote site's problem document is read with ``json.loads``)."""
    return msgspec.structs.replace(record(i), logs="no such file: " + os.fsdecode(b"\xff.txt"))


def conflicting(i: int) -> InvocationRecord:
    """An idempotency key another invocation of the function holds (the unique index refuses it)."""
    return msgspec.structs.replace(record(i), mode="async", idempotency_key="key-0")


@pytest.mark.parametrize("poison", [unencodable, conflicting])
async def test_a_record_the_store_refuses_does_not_hold_back_the_others(
    any_store: Store, poison: Callable[[int], InvocationRecord], caplog: pytest.LogCaptureFixture
) -> None:
    """The batch holding a record the store always refuses failed each time it was written
    again: no outcome written with it or after it was ever stored, and flush() never returned."""
    any_store.save_invocations([msgspec.structs.replace(record(0), mode="async", idempotency_key="key-0")])
    registry = CollectorRegistry()
    rec = Recorder(any_store, interval=0.01, registry=registry)
    rec.start()
    try:
        for r in (record(1), poison(2), record(3)):
            rec.add(r)
        await asyncio.wait_for(rec.flush(), 10)
        rec.add(record(4))
        await asyncio.wait_for(rec.flush(), 10)
    finally:
        await rec.close()
    for i in (1, 3, 4):
        stored = any_store.get_invocation(f"inv-{i}")
        assert stored is not None and stored.status == "succeeded", i
    # What could be stored of it: a failed outcome that says why, so a caller polling it gets an answer.
    refused = any_store.get_invocation("inv-2")
    assert refused is not None and refused.status == "failed" and refused.error is not None
    assert refused.error.kind == "infra"
    assert "could not be stored" in refused.error.message, refused.error.message
    assert refused.logs == "" and refused.output == b""
    said = [r for r in caplog.records if "inv-2" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # logged once, with its id
    assert registry.get_sample_value("spanfaas_records_refused_total", {"function": "f"}) == 1


async def test_a_refused_record_keeps_its_counts_of_runs_and_claims(any_store: Store) -> None:
    """The failed outcome stored in place of a refused record kept ``attempts`` and ``reruns``
    but not ``reclaims`` (migration 10): the claims its gateways gave back read 0."""
    rec = Recorder(any_store, interval=0.01, registry=CollectorRegistry())
    rec.start()
    try:
        rec.add(msgspec.structs.replace(unencodable(1), mode="async", attempts=2, reruns=1, reclaims=3))
        await asyncio.wait_for(rec.flush(), 10)
    finally:
        await rec.close()
    refused = any_store.get_invocation("inv-1")
    assert refused is not None and refused.status == "failed", refused
    assert (refused.attempts, refused.reruns, refused.reclaims) == (2, 1, 3)


@pytest.mark.postgres
@pytest.mark.parametrize("limit", ["program-limit-exceeded", "invalid-memory-alloc"])
async def test_a_record_over_a_postgresql_limit_is_refused_not_written_again_for_ever(
    postgres_db: str, limit: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A value over one of PostgreSQL's limits is refused each time it is written.  Its
    errors read as the store failing -- ProgramLimitExceeded (SQLSTATE 54000) is an
    OperationalError, made StoreUnavailable ('try again'); 'invalid memory alloc request
    size' (a value needing over 1 GiB in the server) an InternalError -- so the recorder
    wrote the batch again for ever, and no outcome written with it was ever stored."""
    from spanfaas.store.postgres import PostgresStore

    store = PostgresStore(postgres_db)
    if limit == "program-limit-exceeded":  # for real: a key longer than an index row may be
        poison = msgspec.structs.replace(record(2), mode="async", idempotency_key=os.urandom(6000).hex())
    else:  # the error PostgreSQL raises then, from a trigger: a value over 1 GiB is too big for a unit test
        with psycopg.connect(postgres_db, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION too_big() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'invalid memory alloc request size 1073741824' USING ERRCODE = 'internal_error'; "
                "END $$ LANGUAGE plpgsql"
            )
            conn.execute("CREATE TRIGGER too_big BEFORE INSERT ON invocations FOR EACH ROW "
                         "WHEN (NEW.logs LIKE 'huge%') EXECUTE FUNCTION too_big()")  # fmt: skip
        poison = msgspec.structs.replace(record(2), logs="huge logs")
    registry = CollectorRegistry()
    rec = Recorder(store, interval=0.01, registry=registry)
    rec.start()
    try:
        for r in (record(1), poison, record(3)):
            rec.add(r)
        await asyncio.wait_for(rec.flush(), 10)
    finally:
        await rec.close()
        stored = {i: store.get_invocation(f"inv-{i}") for i in (1, 2, 3)}
        store.close()
    assert all(r is not None and r.status == "succeeded" for i, r in stored.items() if i != 2), stored
    refused = stored[2]
    assert refused is not None and refused.status == "failed" and refused.error is not None
    assert "could not be stored" in refused.error.message and "the store refused invocation inv-2" in refused.error.message
    said = [r for r in caplog.records if "inv-2" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR", [r.getMessage() for r in said]
    assert registry.get_sample_value("spanfaas_records_refused_total", {"function": "f"}) == 1


async def test_refused_records_among_many_are_found_and_the_rest_stored(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "spanfaas.db")
    rec = Recorder(store, interval=0.01, max_batch=16)
    try:
        for i in range(50):
            rec.add(unencodable(i) if i in (7, 8, 31) else record(i))
        await asyncio.wait_for(rec.close(), 10)  # close: writes what is left, in chunks
        statuses = [r.status for r in sorted(store.list_invocations(limit=100), key=lambda r: int(r.id[4:]))]
    finally:
        store.close()
    assert statuses == ["failed" if i in (7, 8, 31) else "succeeded" for i in range(50)]


async def test_records_the_store_takes_nothing_of_wait_for_it_without_holding_back_the_others(tmp_path: Path) -> None:
    """A store that refuses every write of some records (here a trigger, as in a full disk
    test; in life e.g. a policy the database enforces) refuses even their failure records:
    that is the store failing, not the records -- they wait and are stored as they are."""
    store = SQLiteStore(tmp_path / "spanfaas.db")
    other = sqlite3.connect(tmp_path / "spanfaas.db", isolation_level=None)
    other.execute(
        "CREATE TRIGGER refuse_g BEFORE INSERT ON invocations WHEN NEW.function = 'g' "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    rec = Recorder(store, interval=0.01)
    rec.start()
    try:
        for i in range(6):
            rec.add(msgspec.structs.replace(record(i), function="g") if i == 2 else record(i))
        flushed = asyncio.ensure_future(rec.flush())
        await asyncio.sleep(0.5)
        assert not flushed.done()
        assert sorted(r.id for r in store.list_invocations("f")) == [f"inv-{i}" for i in (0, 1, 3, 4, 5)]
        assert store.get_invocation("inv-2") is None
        other.execute("DROP TRIGGER refuse_g")
        await asyncio.wait_for(flushed, 10)
    finally:
        other.close()
        await rec.close()
    try:
        waited = store.get_invocation("inv-2")
    finally:
        store.close()
    assert waited is not None and waited.status == "succeeded" and waited.error is None


async def test_a_locked_database_is_retried_and_nothing_is_replaced(tmp_path: Path) -> None:
    """A store that fails (here: another process holds SQLite's write lock) is not a record
    it refuses: the records wait, then are stored as they are."""
    store = SQLiteStore(tmp_path / "spanfaas.db", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "spanfaas.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    rec = Recorder(store, interval=0.01)
    rec.start()
    try:
        rec.add(record(1))
        rec.add(unencodable(2))
        flushed = asyncio.ensure_future(rec.flush())
        await asyncio.sleep(0.5)
        assert not flushed.done()
        assert store.get_invocation("inv-1") is None
        other.execute("ROLLBACK")
        await asyncio.wait_for(flushed, 10)
    finally:
        other.close()
        await rec.close()
        store.close()
    reopened = SQLiteStore(tmp_path / "spanfaas.db")
    try:
        one, two = reopened.get_invocation("inv-1"), reopened.get_invocation("inv-2")
    finally:
        reopened.close()
    assert one is not None and one.status == "succeeded" and one.error is None
    assert two is not None and two.status == "failed"  # refused for its logs, once the store was back


async def test_an_invocation_the_store_refuses_to_queue_fails_alone(any_store: Store) -> None:
    """Async invocations queued together share a transaction: one the store refused (a
    value it cannot take) failed all of them, each caller told the store had failed."""
    enqueuer = Enqueuer(any_store)
    good = [msgspec.structs.replace(record(i, "queued"), mode="async") for i in (1, 2, 4)]
    bad = msgspec.structs.replace(record(3, "queued"), mode="async", idempotency_key="key-" + os.fsdecode(b"\xff"))
    outcomes = await asyncio.gather(*(enqueuer.enqueue(r) for r in (good[0], good[1], bad, good[2])), return_exceptions=True)
    assert outcomes[:2] + outcomes[3:] == [(r, True) for r in good], outcomes
    assert isinstance(outcomes[2], RecordRefused), outcomes[2]
    assert "the store refused invocation inv-3: UnicodeEncodeError" in str(outcomes[2]), outcomes[2]
    assert [any_store.get_invocation(f"inv-{i}") is not None for i in (1, 2, 3, 4)] == [True, True, False, True]
