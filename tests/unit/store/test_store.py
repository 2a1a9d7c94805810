"""The Store contract, run against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

import spanfaas
from spanfaas.config import Settings
from spanfaas.errors import InvalidRequest
from spanfaas.model import ErrorInfo, FunctionSpec, InvocationRecord, TokenRecord
from spanfaas.store import RecordRefused, SQLiteStore, Store, StoreInUse, StoreSchemaTooNew, open_store, sha256
from spanfaas.store.migrations import MIGRATIONS


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def spec(name: str = "hello", **kw: object) -> FunctionSpec:
    return FunctionSpec(name=name, **kw)  # type: ignore[arg-type]


def inv(function: str = "hello", **kw: object) -> InvocationRecord:
    defaults: dict[str, object] = dict(
        id=uuid.uuid4().hex, function=function, status="queued", mode="async", created_at=time.time()
    )
    defaults.update(kw)
    return InvocationRecord(**defaults)  # type: ignore[arg-type]


def test_implements_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_schema_is_migrated_once(store: Store) -> None:
    assert store.schema_version() == len(MIGRATIONS)  # type: ignore[attr-defined]
    store._migrate()  # type: ignore[attr-defined]  # idempotent
    assert store.schema_version() == len(MIGRATIONS)  # type: ignore[attr-defined]


def test_schema_newer_than_code_is_refused(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.db")
    with s._tx() as cur:
        cur.execute("UPDATE schema_version SET version = 999")
    s.close()
    with pytest.raises(StoreSchemaTooNew) as refused:
        SQLiteStore(tmp_path / "x.db")
    said = refused.value.message  # what an older gateway of a rolling upgrade says: why, and what to do
    assert f"the store's schema is version 999, newer than this spanfaas ({spanfaas.__version__}) knows ({len(MIGRATIONS)})" in said
    assert "a newer spanfaas has upgraded the store" in said and "upgrade spanfaas here" in said
    assert "upgrade each gateway before it restarts" in said, said


def test_a_queue_of_schema_3_is_upgraded_with_no_reruns(tmp_path: Path) -> None:
    from spanfaas.store.migrations import render

    db = sqlite3.connect(tmp_path / "old.db")
    for statements in MIGRATIONS[:3]:
        for statement in statements:
            db.execute(render(statement, real="REAL", blob="BLOB"))
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (3)")
    db.execute("INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
               "attempts, infra, created_at, not_before) VALUES ('old', 'f', 'running', 'async', '', x'', x'', '', '', 1, '', 0, 0)")  # fmt: skip
    db.commit()
    db.close()
    s = SQLiteStore(tmp_path / "old.db")
    try:
        before = s.get_invocation("old")
        assert s.schema_version() == len(MIGRATIONS) and before is not None and before.reruns == 0
        assert s.functions_generation() == 0
        assert s.requeue_running() == 1 and [r.reruns for r in s.claim(time.time(), 60, 1)] == [1]
    finally:
        s.close()


def test_a_queue_of_schema_9_is_upgraded_with_its_claims_counted_as_runs(tmp_path: Path) -> None:
    """Schema 10 tells a claim whose run started from one that never did; a record an older
    gateway left 'running' is taken for started (it may have been): a re-run, as it was."""
    from spanfaas.store.migrations import render

    db = sqlite3.connect(tmp_path / "old.db")
    for statements in MIGRATIONS[:9]:
        for statement in statements:
            db.execute(render(statement, real="REAL", blob="BLOB"))
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (9)")
    for id, status in (("old-running", "running"), ("old-queued", "queued")):
        db.execute("INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
                   f"attempts, infra, created_at, not_before) VALUES ('{id}', 'f', '{status}', 'async', '', x'', x'', '', '', "
                   "1, '', 0, 0)")  # fmt: skip
    db.commit()
    db.close()
    s = SQLiteStore(tmp_path / "old.db")
    try:
        before = s.get_invocation("old-running")
        assert s.schema_version() == len(MIGRATIONS) and before is not None and before.reclaims == 0
        assert s.requeue_running() == 1
        got = {r.id: (r.attempts, r.reruns, r.reclaims) for r in s.claim(time.time(), 60, 2, owner="new")}
        assert got == {"old-running": (2, 1, 0), "old-queued": (2, 0, 0)}
        assert s.requeue_running() == 2  # claimed by this version: unmarked, so no runs
        got = {r.id: (r.attempts, r.reruns, r.reclaims) for r in s.claim(time.time(), 60, 2, owner="new")}
        assert got == {"old-running": (2, 1, 1), "old-queued": (2, 0, 1)}
    finally:
        s.close()


@pytest.mark.postgres
def test_a_postgres_queue_of_schema_9_is_upgraded(postgres_db: str) -> None:
    import psycopg

    from spanfaas.store.migrations import render
    from spanfaas.store.postgres import PostgresStore

    with psycopg.connect(postgres_db, autocommit=True) as db:
        for statements in MIGRATIONS[:9]:
            for statement in statements:
                db.execute(render(statement, real="DOUBLE PRECISION", blob="BYTEA"))  # type: ignore[arg-type]
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (9)")
        db.execute("INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
                   "attempts, infra, created_at, not_before, lease_until) VALUES ('old', 'f', 'running', 'async', '', '', '', "
                   "'', '', 1, '', 0, 0, 0)")  # fmt: skip
    s = PostgresStore(postgres_db)
    try:
        before = s.get_invocation("old")
        assert s.schema_version() == len(MIGRATIONS) and before is not None and before.reclaims == 0
        assert [(r.attempts, r.reruns, r.reclaims) for r in s.claim(time.time(), 60, 1, owner="new")] == [(2, 1, 0)]
    finally:
        s.close()


def test_function_versions(store: Store) -> None:
    assert store.get_function("hello") is None
    r1 = store.put_function("hello", "a" * 64, spec(description="one"))
    r2 = store.put_function("hello", "b" * 64, spec(description="two", isolation="reuse"))
    store.put_function("other", "c" * 64, spec("other"))
    assert (r1.version, r2.version) == (1, 2)
    latest = store.get_function("hello")
    assert latest is not None and latest.version == 2 and latest.digest == "b" * 64
    assert latest.spec == spec(description="two", isolation="reuse")
    assert [(f.name, f.version) for f in store.list_functions()] == [("hello", 2), ("other", 1)]
    assert [f.version for f in store.function_versions("hello")] == [1, 2]
    assert store.function_digests() == {"a" * 64, "b" * 64, "c" * 64}
    assert store.delete_function("hello") is True
    assert store.delete_function("hello") is False
    assert store.get_function("hello") is None
    assert [f.name for f in store.list_functions()] == ["other"]


def test_the_functions_generation_moves_with_each_change(store: Store) -> None:
    g = store.functions_generation()
    record = store.put_function("hello", "a" * 64, spec(description="one"))
    assert store.functions_generation() == g + 1
    # What a gateway compares with its cache reads back as it was written.
    assert store.get_function("hello") == record and store.list_functions() == [record]
    assert store.delete_function("nope") is False and store.functions_generation() == g + 1
    assert store.delete_function("hello") is True and store.functions_generation() == g + 2


def test_the_removes_a_site_owes_are_kept_until_settled(store: Store) -> None:
    """The spanning scheduler's removes a down site missed: in the store, they outlive
    the gateway that owes them; two gateways owing or settling the same one is harmless."""
    assert store.owed_removes() == []
    store.owe_remove("eu", "fn", 1.0)
    store.owe_remove("eu", "fn", 2.0)  # a second gateway sharing the store owes it too
    store.owe_remove("eu", "alpha", 3.0)
    store.owe_remove("us", "fn", 4.0)
    assert store.owed_removes() == [("eu", "alpha"), ("eu", "fn"), ("us", "fn")]
    assert store.owed_removes("eu") == [("eu", "alpha"), ("eu", "fn")]
    assert store.owed_removes("nowhere") == []
    assert store.settle_remove("eu", "fn") is True
    assert store.settle_remove("eu", "fn") is False  # the other gateway, which did it too
    assert store.owed_removes() == [("eu", "alpha"), ("us", "fn")]
    assert store.delete_function("fn") is False and store.owed_removes("us") == [("us", "fn")]  # not a function's row


def test_the_functions_generation_moves_in_the_changes_own_transaction(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    g = store.functions_generation()
    bump = store._changed  # type: ignore[attr-defined]

    def bump_then_fail(cur: object, what: str) -> None:
        bump(cur, what)
        raise RuntimeError("the transaction fails after the bump")

    monkeypatch.setattr(store, "_changed", bump_then_fail)
    with pytest.raises(RuntimeError):
        store.put_function("hello", "a" * 64, spec())
    assert store.get_function("hello") is None and store.functions_generation() == g
    monkeypatch.setattr(store, "_changed", bump)
    store.put_function("hello", "a" * 64, spec())
    monkeypatch.setattr(store, "_changed", bump_then_fail)
    with pytest.raises(RuntimeError):
        store.delete_function("hello")
    assert store.get_function("hello") is not None and store.functions_generation() == g + 1


@pytest.mark.postgres
async def test_postgres_announces_function_changes_as_they_commit(postgres_db: str) -> None:
    from spanfaas.store import AnnouncesChanges
    from spanfaas.store.postgres import PostgresStore

    store, other = PostgresStore(postgres_db), PostgresStore(postgres_db)  # another gateway's
    try:
        assert isinstance(store, AnnouncesChanges) and not isinstance(SQLiteStore, AnnouncesChanges)
        changes = store.function_changes()
        await asyncio.wait_for(anext(changes), 10)  # listening: look now
        await asyncio.to_thread(other.put_function, "hello", "a" * 64, spec())
        await asyncio.wait_for(anext(changes), 10)
        await asyncio.to_thread(store.delete_function, "hello")
        await asyncio.wait_for(anext(changes), 10)
        assert await asyncio.to_thread(other.delete_function, "hello") is False  # no change: nothing announced
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(changes), 0.3)
        await changes.aclose()
    finally:
        store.close()
        other.close()


def test_a_postgres_url_that_cannot_be_used_is_one_line_that_names_it() -> None:
    """A URL libpq cannot parse was psycopg's ProgrammingError traceback (the URL in it, password and all);
    a server that does not answer was a message of two lines (libpq's tab-indented hint)."""
    from spanfaas.errors import InfraUnavailable
    from spanfaas.store.postgres import PostgresStore

    with pytest.raises(InvalidRequest) as bad:
        PostgresStore("postgresql://u:secret@[bad/db")
    assert bad.value.message == (
        "SPANFAAS_STORE (postgresql://u:***@[bad/db) is not a PostgreSQL URL libpq can read; "
        "write postgresql://USER:PASSWORD@HOST:PORT/DATABASE (an IPv6 host in [brackets])"
    )
    with pytest.raises(InfraUnavailable) as down:
        PostgresStore("postgresql://u:secret@127.0.0.1:1/db")  # port 1: nothing listens there
    assert down.value.message.startswith("cannot connect to the PostgreSQL store (postgresql://u:***@127.0.0.1:1/db): ")
    assert "\n" not in down.value.message and "\t" not in down.value.message and "secret" not in down.value.message


@pytest.mark.postgres
def test_postgres_connections_the_server_ended_are_not_an_internal_error(postgres_db: str) -> None:
    """A PostgreSQL restart ends the pool's connections: an idle one is replaced unseen,
    and one ended during a query is InfraUnavailable (503, 'try again') naming the store,
    not psycopg's AdminShutdown (a 500 'the gateway failed unexpectedly')."""
    import psycopg

    from spanfaas.errors import InfraUnavailable
    from spanfaas.store.postgres import PostgresStore

    store = PostgresStore(postgres_db, pool_size=2)
    db = postgres_db.rsplit("/", 1)[1]

    def end_connections() -> int:
        with psycopg.connect(postgres_db, autocommit=True) as admin:
            return len(admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                "AND query NOT LIKE 'SELECT pg_terminate_backend%%'", (db,),
            ).fetchall())  # fmt: skip

    try:
        store.put_function("hello", "a" * 64, spec())
        assert end_connections() >= 1  # the pooled connection
        time.sleep(0.1)  # its end arrived
        assert store.get_function("hello") is not None  # on a new connection
        ended = threading.Timer(0.3, end_connections)
        ended.start()
        try:
            with pytest.raises(InfraUnavailable, match=r"the PostgreSQL store \(postgresql://.*\) failed: .*try again"):
                with store._read() as cur:  # a query running when the server ends its connection
                    cur.execute("SELECT pg_sleep(5)")
        finally:
            ended.join()
        assert store.get_function("hello") is not None
    finally:
        store.close()


def test_concurrent_puts_get_distinct_versions(store: Store) -> None:
    versions: list[int] = []

    def put() -> None:
        for _ in range(5):
            versions.append(store.put_function("hello", "a" * 64, spec()).version)

    threads = [threading.Thread(target=put) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, 21))


def test_invocation_roundtrip_and_listing(store: Store) -> None:
    a = inv(status="succeeded", mode="sync", payload=b"\x00in", output=b'{"x":1}', created_at=1.0, logs="hi\n")
    b = inv(status="failed", created_at=2.0, error=ErrorInfo(kind="error", type="ValueError", message="bad", traceback="tb"))
    c = inv("other", status="succeeded", created_at=3.0)
    store.create_invocation(a)
    store.save_invocations([b, c])
    assert store.get_invocation(a.id) == a
    assert store.get_invocation(b.id) == b
    assert store.get_invocation("nope") is None
    listed = store.list_invocations("hello")
    assert [r.id for r in listed] == [b.id, a.id]  # newest first
    assert listed[1].payload == b"" and listed[1].output == b'{"x":1}' and listed[1].logs == "hi\n"
    assert [r.id for r in store.list_invocations(limit=1)] == [c.id]
    assert [r.id for r in store.list_invocations(status="failed")] == [b.id]
    bare = store.list_invocations("hello", outputs=False)  # logs and statuses, not the results
    assert [r.id for r in bare] == [b.id, a.id] and bare[1].output == b"" and bare[1].logs == "hi\n"
    assert bare[1].output_type == a.output_type and bare[0].error == b.error
    # save_invocations replaces a record that has not finished ...
    running = inv(status="running", created_at=4.0)
    store.save_invocations([running])
    done = inv(id=running.id, status="succeeded", created_at=4.0, duration_ms=1.5, cold=True, attempts=2)
    store.save_invocations([done])
    assert store.get_invocation(running.id) == done
    # ... not a finished one: the first outcome stored stays (another run's, later, does not replace it)
    store.save_invocations([inv(id=b.id, status="succeeded", created_at=2.0, attempts=2), inv(id=done.id, status="queued")])
    assert store.get_invocation(b.id) == b and store.get_invocation(done.id) == done


def test_a_value_the_store_cannot_take_is_record_refused(store: Store) -> None:
    """The recorder tells a record that will never be stored from a store that failed by this."""
    ok = inv(status="succeeded")
    unencodable = inv(status="succeeded", logs="no such file: \udcff.txt")  # os.fsdecode of a non-UTF-8 name
    with pytest.raises(RecordRefused, match=r"one of 2 invocations: UnicodeEncodeError: .*\\udcff"):
        store.save_invocations([ok, unencodable])
    assert store.get_invocation(ok.id) is None  # one transaction: nothing of it was stored
    store.enqueue(inv(idempotency_key="k1"))
    taken = inv(idempotency_key="k1")
    with pytest.raises(RecordRefused, match=f"invocation {taken.id}: .*(UNIQUE|unique)"):
        store.save_invocations([taken])
    store.save_invocations([ok])  # the store still works


def test_enqueue_is_idempotent_per_function(store: Store) -> None:
    first, created = store.enqueue(inv(idempotency_key="k1", payload=b"1"))
    assert created
    again, created = store.enqueue(inv(idempotency_key="k1", payload=b"2"))
    assert not created and again.id == first.id and again.payload == b"1"
    _, created = store.enqueue(inv("other", idempotency_key="k1"))
    assert created
    out = store.enqueue_many([inv(idempotency_key="k2"), inv(idempotency_key="k2"), inv(), inv()])
    assert [c for _, c in out] == [True, False, True, True]
    assert out[1][0].id == out[0][0].id
    assert store.queue_depth() == 5


def test_claim_takes_due_records_once(store: Store) -> None:
    now = time.time()
    later = inv(not_before=now + 100)
    due = [inv(created_at=now - 3 + i) for i in range(3)]
    store.enqueue_many([later, *due])
    got = store.claim(now, lease=300, limit=2, owner="g1")
    assert [r.id for r in got] == [due[0].id, due[1].id]
    assert all(r.status == "running" and r.attempts == 1 and r.started_at == now for r in got)
    nxt = store.claim_next(now, lease=300)
    assert nxt is not None and nxt.id == due[2].id
    assert store.claim_next(now, lease=30) is None
    assert store.queue_depth() == 1
    claimed = store.claim_next(now + 101, lease=30)
    assert claimed is not None and claimed.id == later.id


def test_expired_lease_is_reclaimed(store: Store) -> None:
    now = time.time()
    a, b = inv(), inv()
    store.enqueue_many([a, b])
    assert len(store.claim(now, lease=10, limit=2, owner="g1")) == 2
    store.mark_started({a.id: "g1", b.id: "g1"})
    store.extend_leases([b.id], now + 100)
    assert store.claim(now + 5, lease=10, limit=10) == []
    again = store.claim(now + 11, lease=10, limit=10)  # a's lease expired, b's was extended
    assert [r.id for r in again] == [a.id] and again[0].attempts == 2
    assert again[0].reruns == 1  # its run left no outcome: a re-run, not a retry


def test_a_stored_outcome_keeps_its_reruns(store: Store) -> None:
    a = inv()
    store.enqueue(a)
    [run] = store.claim(time.time(), lease=-1, limit=1, owner="g1")  # a lease already expired
    store.mark_started({run.id: "g1"})
    [rerun] = store.claim(time.time(), lease=60, limit=1)
    assert (rerun.attempts, rerun.reruns) == (2, 1)
    store.save_invocations([msgspec.structs.replace(rerun, status="queued", not_before=0.0)])  # a retry, as the dispatcher writes it
    [retry] = store.claim(time.time(), lease=60, limit=1)
    assert (retry.attempts, retry.reruns) == (3, 1)


def test_requeue_running(store: Store) -> None:
    store.enqueue_many([inv(), inv()])
    store.mark_started({r.id: "g1" for r in store.claim(time.time(), lease=60, limit=5, owner="g1")})
    assert store.queue_depth() == 0
    assert store.requeue_running() == 2
    assert store.queue_depth() == 2
    assert [(r.attempts, r.reruns) for r in store.claim(time.time(), lease=60, limit=5)] == [(2, 1), (2, 1)]


def test_a_claim_whose_run_never_started_is_given_back_as_no_run(store: Store) -> None:
    """A gateway died (its lease ran out) while some of its claims waited (in the function's
    queue, for a deploy): those are no runs -- ``attempts`` as before the claim, ``reclaims``
    + 1, not ``reruns``; only a run marked started (``mark_started``) is a re-run."""
    now = time.time()
    ran, waited, foreign = inv(created_at=now - 3), inv(created_at=now - 2), inv(created_at=now - 1)
    store.enqueue_many([ran, waited, foreign])
    assert len(store.claim(now, lease=10, limit=3, owner="g1")) == 3
    store.mark_started({ran.id: "g1"})
    store.mark_started({foreign.id: "g2"})  # not its claim (a stale mark of another gateway): no start
    again = store.claim(now + 11, lease=10, limit=3, owner="g3")
    assert [(r.id, r.attempts, r.reruns, r.reclaims) for r in again] == [
        (ran.id, 2, 1, 0), (waited.id, 1, 0, 1), (foreign.id, 1, 0, 1),
    ]
    # each claim starts unmarked: a start marked in an earlier claim does not carry over
    store.mark_started({waited.id: "g3"})
    assert store.requeue_running() == 3
    assert [(r.id, r.attempts, r.reruns, r.reclaims) for r in store.claim(now + 12, lease=10, limit=3)] == [
        (ran.id, 2, 1, 1), (waited.id, 2, 1, 1), (foreign.id, 1, 0, 2),
    ]
    stored = store.get_invocation(foreign.id)  # the count is kept with the record
    assert stored is not None and stored.reclaims == 2


def test_a_start_refused_before_it_ran_is_no_run(store: Store) -> None:
    """A run marked started whose start a site then refused (429: it ran nothing) is marked
    so again (``started=False``): a crash gives the claim back as one that only waited.  A
    mark of another claim is left as it is."""
    now = time.time()
    refused, other = inv(created_at=now - 2), inv(created_at=now - 1)
    store.enqueue_many([refused, other])
    assert len(store.claim(now, lease=10, limit=2, owner="g1")) == 2
    store.mark_started({refused.id: "g1", other.id: "g1"})
    store.mark_started({refused.id: "g1", other.id: "g2"}, started=False)
    again = store.claim(now + 11, lease=10, limit=2, owner="g3")
    assert [(r.id, r.attempts, r.reruns, r.reclaims) for r in again] == [(refused.id, 1, 0, 1), (other.id, 2, 1, 0)]


def test_a_mark_of_an_earlier_claim_does_not_land_on_the_next_claim_of_the_same_gateway(store: Store) -> None:
    """A mark written after its record was given back (its run refused: 429) and claimed again
    by the same gateway named only that gateway, and landed on the new claim, which only
    waited: a crash then counted it a re-run.  Each claim has its own owner now."""
    now = time.time()
    r = inv(created_at=now - 1)
    store.enqueue_many([r])
    [first] = store.claim(now, lease=60, limit=1, owner="gw-a.1")
    store.save_invocations([msgspec.structs.replace(first, status="queued", attempts=first.attempts - 1)])  # given back
    [second] = store.claim(now, lease=60, limit=1, owner="gw-a.2")
    store.mark_started({r.id: "gw-a.1"})  # the first claim's mark, late
    assert store.requeue_running() == 1  # its gateway died: the claim given back
    [third] = store.claim(now + 61, lease=60, limit=1, owner="gw-b.1")
    assert (second.attempts, third.attempts, third.reruns, third.reclaims) == (1, 1, 0, 1)
    store.mark_started({r.id: "gw-b.1", "no-such-id": "gw-b.1"})  # its own claim's mark lands
    assert store.requeue_running() == 1
    [fourth] = store.claim(now + 200, lease=60, limit=1, owner="gw-c.1")
    assert (fourth.attempts, fourth.reruns, fourth.reclaims) == (2, 1, 1)


def test_two_gateways_enqueueing_the_same_keys_in_other_orders(store: Store) -> None:
    """Group commits of two gateways with the same idempotency keys, in opposite orders:
    each key is taken once and no batch fails (PostgreSQL detected a deadlock)."""
    other = SQLiteStore(store.path) if isinstance(store, SQLiteStore) else type(store)(store.url)  # type: ignore[attr-defined]
    try:
        for round in range(10):
            keys = [f"r{round}-{i}" for i in range(20)]
            out: dict[str, list[tuple[InvocationRecord, bool]]] = {}
            errors: list[BaseException] = []

            def go(s: Store, ks: list[str], tag: str) -> None:
                try:
                    out[tag] = s.enqueue_many([inv(idempotency_key=k) for k in ks])
                except Exception as exc:  # noqa: BLE001 - collected for the assertion
                    errors.append(exc)

            threads = [threading.Thread(target=go, args=(store, keys, "a")),
                       threading.Thread(target=go, args=(other, keys[::-1], "b"))]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            a, b = out["a"], out["b"][::-1]
            assert [r.idempotency_key for r, _ in a] == keys == [r.idempotency_key for r, _ in b]
            for (ra, new_a), (rb, new_b) in zip(a, b):
                assert ra.id == rb.id and new_a != new_b  # one of the two made it, the other got it back
    finally:
        other.close()


def test_a_failed_sqlite_commit_leaves_no_transaction_open(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred constraint; in life a full disk) is rolled back:
    the thread's connection kept the transaction and the write lock, and every later
    write of the gateway failed ('cannot start a transaction within a transaction', busy)."""
    store = SQLiteStore(tmp_path / "spanfaas.db")
    try:
        with pytest.raises(sqlite3.IntegrityError):
            with store._tx() as cur:
                cur.execute("PRAGMA defer_foreign_keys = ON")
                cur.execute("INSERT INTO image_packages (list, name, specifier, note, added_by, added_at) "
                            "VALUES ('no-such-list', 'p', '', '', '', 0)")  # fmt: skip
        store.enqueue(inv())  # the same thread, the same connection
        assert store.queue_depth() == 1
    finally:
        store.close()


def test_one_owner_per_sqlite_store(tmp_path: Path) -> None:
    """A second gateway's requeue_running would take the first one's running records: it is refused."""
    first, second = SQLiteStore(tmp_path / "spanfaas.db"), SQLiteStore(tmp_path / "spanfaas.db")
    try:
        first.enqueue_many([inv()])
        first.claim(time.time(), lease=60, limit=5)
        assert first.requeue_running() == 1 and first.requeue_running() == 0  # ours, again and again
        first.claim(time.time(), lease=60, limit=5)
        with pytest.raises(StoreInUse, match=r"another gateway \(pid \d+\) is serving the data dir"):
            second.requeue_running()
        assert second.queue_depth() == 0  # the first one's record is left running
        second.list_invocations()  # reading (the CLI, tests) needs no ownership
        first.close()  # as a dead process would: the lock goes with it
        assert second.requeue_running() == 1
    finally:
        first.close()
        second.close()


def test_concurrent_claims_never_share_a_record(store: Store) -> None:
    records = [inv() for _ in range(200)]
    store.enqueue_many(records)
    seen: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while batch := store.claim(time.time(), lease=60, limit=7):
            with lock:
                seen.extend(r.id for r in batch)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(r.id for r in records)


def test_tokens(store: Store) -> None:
    assert store.count_tokens() == 0
    t = TokenRecord(id="tok1", name="admin", scopes=["admin"], token_hash="h" * 64, created_at=1.0)
    store.create_token(t)
    store.create_token(TokenRecord(id="tok2", name="ci", scopes=["invoke", "deploy"], token_hash="g" * 64, created_at=2.0))
    assert store.get_token_by_hash("h" * 64) == t
    assert store.get_token_by_hash("x") is None
    assert [x.id for x in store.list_tokens()] == ["tok1", "tok2"]
    assert store.count_tokens() == 2
    assert store.delete_token("tok1") is True
    assert store.delete_token("tok1") is False
    assert store.count_tokens() == 1


def test_open_store_picks_the_backend(tmp_path: Path) -> None:
    s = open_store(Settings(data_dir=str(tmp_path)))
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "spanfaas.db"
    s.close()
    with pytest.raises(InvalidRequest, match="postgresql://"):
        open_store(Settings(data_dir=str(tmp_path), store="mysql://x"))


@pytest.mark.postgres
def test_open_store_postgres(postgres_db: str, tmp_path: Path) -> None:
    from spanfaas.store.postgres import PostgresStore

    s = open_store(Settings(data_dir=str(tmp_path), store=postgres_db))
    assert isinstance(s, PostgresStore)
    s.close()


def test_sqlite_is_in_wal_mode(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "w.db")
    with s._read() as cur:
        cur.execute("PRAGMA journal_mode")
        assert cur.fetchone()[0] == "wal"
    s.close()


# -- bundles: content-addressed blobs, kept with the versions that refer to them ---------


def test_a_version_is_stored_with_its_bundle(store: Store) -> None:
    data = b"bundle one" * 1000
    digest = sha256(data)
    assert store.get_blob(digest) is None
    store.put_function("hello", digest, spec(), bundle=data)
    assert store.get_blob(digest) == data
    store.put_function("hello", digest, spec(), bundle=data)  # the same bytes again: kept once
    assert store.get_blob(digest) == data and store.missing_blobs() == set()
    store.put_function("other", "c" * 64, spec("other"))  # a version stored without its bundle
    assert store.missing_blobs() == {"c" * 64}


def test_a_bundle_is_deleted_only_once_no_stored_version_refers_to_it(store: Store) -> None:
    data, other = b"shared bundle", b"bundle of g's second version"
    digest = sha256(data)
    store.put_function("f", digest, spec("f"), bundle=data)
    store.put_function("g", digest, spec("g"), bundle=data)
    store.put_function("g", sha256(other), spec("g"), bundle=other)
    assert store.delete_function("f")
    assert store.collect_blobs({digest}) == set() and store.get_blob(digest) == data  # g's version 1 has it
    assert store.delete_function("g")
    assert store.collect_blobs({digest, sha256(other), "e" * 64}) == {digest, sha256(other)}
    assert store.get_blob(digest) is None and store.get_blob(sha256(other)) is None


def test_a_bundle_is_added_only_for_a_stored_version_that_lacks_it(store: Store) -> None:
    data = b"a bundle an older gateway kept on its disk only"
    digest = sha256(data)
    assert store.put_blob(digest, data) is False and store.get_blob(digest) is None  # nobody refers to it
    store.put_function("hello", digest, spec())
    assert store.missing_blobs() == {digest}
    g = store.functions_generation()
    assert store.put_blob(digest, data) is True and store.get_blob(digest) == data
    assert store.functions_generation() == g + 1  # gateways that could not deploy the version try again
    assert store.put_blob(digest, data) is False and store.missing_blobs() == set()  # had it
    assert store.functions_generation() == g + 1


def test_a_collection_racing_a_deploy_of_the_same_bundle_never_leaves_a_version_without_it(store: Store) -> None:
    """Two gateways deploying and removing functions of one bundle: a remove's collection
    and the other's deploy, racing, never leave a stored version without its bundle."""
    data = b"the bundle both gateways deploy" * 100
    digest = sha256(data)
    lacking: list[str] = []

    def churn(name: str) -> None:
        for _ in range(25):
            store.put_function(name, digest, spec(name), bundle=data)
            if store.get_blob(digest) is None:
                lacking.append(name)
            store.delete_function(name)
            store.collect_blobs({digest})

    threads = [threading.Thread(target=churn, args=(n,)) for n in ("f", "g")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lacking == []
    assert store.get_blob(digest) is None  # the last remove collected it


def test_many_large_bundles(store: Store) -> None:
    blobs = [bytes([i]) * (3 * 1024 * 1024) for i in range(3)]
    for i, data in enumerate(blobs):
        store.put_function(f"f{i}", sha256(data), spec(f"f{i}"), bundle=data)
    for data in blobs:
        got = store.get_blob(sha256(data))
        assert got is not None and len(got) == len(data) and got == data


def test_a_page_stops_before_the_record_that_would_pass_its_budget(store: Store) -> None:
    """A page took the record that passed ``max_bytes``, and ended after it: a page of records of
    100 kB with a budget of 250 kB held 300 kB.  It ends before that record (which begins the
    next page), and holds one record at least, however large."""
    chatty = [inv(status="succeeded", created_at=float(10 - i), logs=str(i) * 100_000) for i in range(5)]
    store.save_invocations(chatty)
    pages: list[list[str]] = []
    after: tuple[float, str] | None = None
    while True:
        page = store.page_invocations("hello", limit=10, after=after, max_bytes=250_000)
        assert sum(len(r.logs) for r in page.records) <= 250_000, [len(r.logs) for r in page.records]
        pages.append([r.id for r in page.records])
        if not page.more:
            break
        after = (page.records[-1].created_at, page.records[-1].id)
    assert pages == [[r.id for r in chatty[:2]], [r.id for r in chatty[2:4]], [chatty[4].id]]
    one = store.page_invocations("hello", limit=10, max_bytes=10)  # under one record's size: that record
    assert [r.id for r in one.records] == [chatty[0].id] and one.more


def test_invocations_are_listed_in_pages_bounded_in_size(store: Store) -> None:
    """A listing had no paging and no bound: limit=1000 read every record whole, outputs of up
    to 32 MiB each, into one response.  Pages follow one another by position (created_at, then
    id, so records made at the same moment are neither skipped nor repeated); an output over
    max_output is left out as it is read (its size said), and a page stops at max_bytes."""
    same = [inv(status="succeeded", created_at=5.0, output=b'"x"') for _ in range(3)]  # one timestamp
    big = inv(status="succeeded", created_at=4.0, output=b"b" * 5000, logs="l" * 100)
    older = [inv(status="failed", created_at=float(t), logs="y" * 3000) for t in (3, 2, 1)]
    store.save_invocations([*same, big, *older, inv("other", created_at=9.0)])
    everything = [r.id for r in store.list_invocations("hello", limit=100)]

    seen: list[str] = []
    after: tuple[float, str] | None = None
    while True:
        page = store.page_invocations("hello", limit=2, after=after, max_output=1000)
        seen += [r.id for r in page.records]
        assert len(page.records) <= 2
        if not page.more:
            break
        after = (page.records[-1].created_at, page.records[-1].id)
    # newest first; records made at the same moment by id, descending
    assert seen == [*sorted((r.id for r in same), reverse=True), big.id, *(r.id for r in older)]
    assert sorted(seen) == sorted(everything)

    page = store.page_invocations("hello", limit=10, max_output=1000)
    by_id = {r.id: r for r in page.records}
    assert page.left_out == {big.id: 5000} and by_id[big.id].output == b"" and by_id[big.id].logs == "l" * 100
    assert by_id[same[0].id].output == b'"x"' and not page.more and len(page.records) == 7

    budget = store.page_invocations("hello", limit=10, max_bytes=8000)  # the first of the logs of 3000 would pass it
    assert [r.id for r in budget.records] == seen[:4] and budget.more
    last = store.page_invocations("hello", limit=10, max_bytes=1, after=(older[1].created_at, older[1].id))
    assert [r.id for r in last.records] == [older[2].id] and not last.more  # one at least; none after it
    assert store.page_invocations("hello", status="failed", limit=10).records == store.list_invocations("hello", status="failed")
    bare = store.page_invocations("hello", limit=10, outputs=False)
    assert bare.left_out == {} and all(r.output == b"" for r in bare.records)


def test_where_a_call_was_tried_first_is_kept(store: Store) -> None:
    # Migration 11: a call that failed over keeps the infrastructures it was tried on first, with why.
    tried = ["eu: site 'eu' stopped answering while the call was in flight there (down); it may have run there"]
    failed_over = inv(status="succeeded", mode="sync", infra="local", tried=tried)
    plain = inv(status="succeeded", mode="sync", infra="local")
    store.save_invocations([failed_over, plain])
    got = store.get_invocation(failed_over.id)
    assert got is not None and got.tried == tried
    again = store.get_invocation(plain.id)
    assert again is not None and again.tried == []


@pytest.mark.postgres
@pytest.mark.parametrize("leases", ["cba", "abc"])
@pytest.mark.parametrize("write", ["mark_started", "extend_leases"])
def test_marks_and_a_give_back_take_the_rows_in_one_order(postgres_db: str, leases: str, write: str) -> None:
    """``mark_started`` (and ``extend_leases``) and the give-back of expired claims (every ``claim``) lock the same rows:
    taken in other orders (the marks as listed, the give-back as it scans), each waited for a
    row the other held -- PostgreSQL's deadlock, one of the two failed.  Both take rows in
    the order of their ids now.  A third transaction holds the middle row until both wait."""
    import psycopg

    from spanfaas.store.postgres import PostgresStore

    store = PostgresStore(postgres_db)
    now = time.time()
    a, b, c = (inv(id=f"inv-{x}", created_at=now - 3 + i) for i, x in enumerate("abc"))
    by_name = {"a": a, "b": b, "c": c}
    errors: list[BaseException] = []

    def run(f: Any) -> threading.Thread:
        def target() -> None:
            try:
                f()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        t = threading.Thread(target=target)
        t.start()
        return t

    try:
        store.enqueue_many([a, b, c])
        owner = "gw-a.1"
        assert len(store.claim(now, lease=60, limit=3, owner=owner)) == 3
        with psycopg.connect(postgres_db, autocommit=True) as db:
            # the give-back meets them in the order of their leases (and as stored); the marks are listed the other way
            for i, name in enumerate(leases):
                db.execute("UPDATE invocations SET lease_until = %s WHERE id = %s", (now - 10 + i, by_name[name].id))
            marks = {by_name[name].id: owner for name in reversed(leases)}
            with psycopg.connect(postgres_db) as blocker:
                blocker.execute("SELECT id FROM invocations WHERE id = %s FOR UPDATE", (b.id,))
                threads = [
                    run(lambda: store.mark_started(marks) if write == "mark_started" else store.extend_leases(list(marks), now + 60)),
                    run(lambda: store.claim(now, lease=60, limit=0, owner="gw-b.1")),
                ]
                deadline = time.monotonic() + 30
                while db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone() != (2,):
                    assert time.monotonic() < deadline and not errors, errors
                    time.sleep(0.01)
                blocker.commit()
            for t in threads:
                t.join(30)
        assert errors == [] and not any(t.is_alive() for t in threads), errors
        rows = {r.id: r.status for r in (store.get_invocation(x.id) for x in (a, b, c)) if r is not None}
        if write == "mark_started":  # (extended first, leases are not given back)
            assert rows == {a.id: "queued", b.id: "queued", c.id: "queued"}, rows
    finally:
        store.close()


class _Recording:
    """A cursor that keeps the statements run through it (and their values), as they were sent."""

    def __init__(self, cur: Any, into: list[tuple[str, Any]]) -> None:
        self._cur, self._into = cur, into

    def execute(self, sql: str, args: Any = None, **kw: Any) -> Any:
        self._into.append((sql, args))
        return self._cur.execute(sql, args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def _touched(plan: dict[str, Any], relation: str) -> tuple[int, list[str]]:
    """Rows of ``relation`` the plan's scans read (those they kept and those their filters
    dropped, over all their loops), and the kinds of those scans."""
    rows, kinds = 0, []
    if plan.get("Relation Name") == relation:
        kinds.append(plan["Node Type"])
        per_loop = plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0) + plan.get("Rows Removed by Index Recheck", 0)
        rows += per_loop * plan["Actual Loops"]
    for child in plan.get("Plans", []):
        r, k = _touched(child, relation)
        rows, kinds = rows + r, kinds + k
    return rows, kinds


@pytest.mark.postgres
@pytest.mark.parametrize("write", ["mark_started", "extend_leases"])
def test_marks_read_only_the_rows_they_mark_on_postgres(postgres_db: str, write: str) -> None:
    """``mark_started`` joined its marks to every 'running' row (a hash join over a sequential
    scan of the table, from some hundred marks a statement on): its cost grew with the claims of
    every gateway and the rows kept, not with its own marks.  Its plan, as PostgreSQL runs it on
    a table of 20,000 running (and 20,000 finished) rows, reads each marked row once, by its id."""
    from contextlib import contextmanager

    import psycopg

    from spanfaas.store.postgres import PostgresStore

    sent: list[tuple[str, Any]] = []

    class Recorded(PostgresStore):
        @contextmanager
        def _tx(self) -> Any:
            with super()._tx() as cur:
                yield _Recording(cur, sent)

    store = Recorded(postgres_db)
    running, marked = 20_000, 1000
    try:
        with psycopg.connect(postgres_db, autocommit=True) as db:
            db.execute(
                "INSERT INTO invocations (id, function, status, mode, content_type, payload, output, output_type, logs, "
                "attempts, infra, created_at, not_before, lease_until, owner, started) "
                "SELECT 'inv-' || lpad(g::text, 6, '0'), 'fn', CASE WHEN g <= %s THEN 'running' ELSE 'succeeded' END, "
                "'async', 'application/json', ''::bytea, ''::bytea, '', '', 1, 'local', g, g, "
                "CASE WHEN g <= %s THEN 1e12 END, 'gw-' || (g %% 4) || '.1', 0 FROM generate_series(1, %s) g",
                (running, running, 2 * running),
            )
            db.execute("ANALYZE invocations")
            marks = {f"inv-{g:06d}": f"gw-{g % 4}.1" for g in range(1, running + 1, running // marked)[: marked - 1]}
            marks["inv-000002"] = "gw-other.9"  # not its claim: left as it is (and one statement: 1000 marks)
            sent.clear()
            store.mark_started(marks) if write == "mark_started" else store.extend_leases(list(marks), 2e12)
            [(sql, args)] = [(s, a) for s, a in sent if s.lstrip().upper().startswith(("UPDATE", "WITH"))]
            with db.transaction(force_rollback=True):
                [[[explained]]] = db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, args).fetchall()
            rows, kinds = _touched(explained["Plan"], "invocations")
            assert "Seq Scan" not in kinds and rows <= 3 * len(marks), (rows, kinds, explained)
            column = "started" if write == "mark_started" else "lease_until = 2e12"
            [(changed,)] = db.execute(f"SELECT count(*) FROM invocations WHERE {column} = 1" if write == "mark_started"
                                      else f"SELECT count(*) FROM invocations WHERE {column}").fetchall()  # fmt: skip
            assert changed == (len(marks) - 1 if write == "mark_started" else len(marks)), changed
    finally:
        store.close()
