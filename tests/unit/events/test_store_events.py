"""The event tables of the Store, against real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import Any

import pytest

from spanfaas.events.admit import Admitter
from spanfaas.model import ErrorInfo, Event, FunctionSpec, InvocationRecord, Trigger, TriggerRecord
from spanfaas.store import Admission, DeadLetter, RecordRefused, Refused, SQLiteStore, Store




EVENT = Event(attributes={"specversion": "1.0", "id": "e1", "source": "/s", "type": "t"}, proxy="cloudevents", trigger="fn:0")


def inv(function: str = "fn", **kw: object) -> InvocationRecord:
    fields: dict[str, object] = dict(id=uuid.uuid4().hex, function=function, status="queued", mode="async",
                                     created_at=time.time(), event=EVENT, payload=b"{}")  # fmt: skip
    fields.update(kw)
    return InvocationRecord(**fields)  # type: ignore[arg-type]


def test_event_column_round_trips(any_store: Store) -> None:
    r = inv()
    any_store.enqueue(r)
    got = any_store.get_invocation(r.id)
    assert got is not None and got.event == EVENT
    [claimed] = any_store.claim(time.time(), 30, 10)
    assert claimed.event == EVENT


def test_admit_deduplicates_within_the_window(any_store: Store) -> None:
    now = time.time()
    first, again, other = inv(), inv(), inv()
    assert any_store.admit([Admission(source="/s", id="e1", records=[first], window=60)], now) == [True]
    assert any_store.admit([Admission(source="/s", id="e1", records=[again], window=60)], now + 30) == [False]
    assert any_store.admit([Admission(source="/other", id="e1", records=[other], window=60)], now + 30) == [True]
    assert any_store.get_invocation(again.id) is None
    # past the window the same (source, id) is a new event
    late = inv()
    assert any_store.admit([Admission(source="/s", id="e1", records=[late], window=60)], now + 61) == [True]
    assert {r.id for r in any_store.list_invocations("fn")} == {first.id, other.id, late.id}


def test_two_gateways_admitting_the_same_events_in_other_orders(any_store: Store) -> None:
    """A redelivered batch reaching two gateways in other orders: each event is admitted
    once and neither batch fails (PostgreSQL detected a deadlock on events_seen)."""
    other = SQLiteStore(any_store.path) if isinstance(any_store, SQLiteStore) else type(any_store)(any_store.url)  # type: ignore[attr-defined]
    try:
        for round in range(10):
            ids = [f"r{round}-{i}" for i in range(20)]
            out: dict[str, list[bool]] = {}
            errors: list[BaseException] = []

            def go(s: Store, order: list[str], tag: str) -> None:
                try:
                    out[tag] = s.admit([Admission(source="/s", id=i, records=[inv()], window=60) for i in order], time.time())
                except Exception as exc:  # noqa: BLE001 - collected for the assertion
                    errors.append(exc)

            threads = [threading.Thread(target=go, args=(any_store, ids, "a")),
                       threading.Thread(target=go, args=(other, ids[::-1], "b"))]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
            assert all(a != b for a, b in zip(out["a"], out["b"][::-1]))  # each event: admitted by one of the two
    finally:
        other.close()


def test_admit_batch_with_a_duplicate_inside(any_store: Store) -> None:
    a, b = inv(), inv()
    got = any_store.admit([Admission(source="/s", id="x", records=[a], window=60),
                           Admission(source="/s", id="x", records=[b], window=60)], time.time())  # fmt: skip
    assert got == [True, False]


def test_prune_seen(any_store: Store) -> None:
    now = time.time()
    any_store.admit([Admission(source="/s", id="old", records=[], window=60)], now - 100)
    any_store.admit([Admission(source="/s", id="new", records=[], window=60)], now)
    assert any_store.prune_seen(now - 60) == 1


def test_schedule_ticks_fire_once(any_store: Store) -> None:
    assert any_store.last_tick("k", 100.0) == 100.0
    assert any_store.last_tick("k", 999.0) == 100.0  # the default is stored only the first time
    a, b = inv(), inv()
    assert any_store.admit([Admission(source="", id="", records=[a], schedule="k", tick=160.0)], time.time()) == [True]
    assert any_store.admit([Admission(source="", id="", records=[b], schedule="k", tick=160.0)], time.time()) == [False]
    assert any_store.admit([Admission(source="", id="", records=[], schedule="k", tick=150.0)], time.time()) == [False]
    assert any_store.last_tick("k", 0.0) == 160.0
    any_store.forget_schedules(["k"])
    assert any_store.last_tick("k", 500.0) == 500.0  # forgotten: starts afresh


def test_triggers(any_store: Store) -> None:
    rec = TriggerRecord(id="trg_1", function="fn", trigger=Trigger(source="s3://*", filters={"shop": "b*"}), created_at=1.0)
    any_store.put_trigger(rec)
    assert any_store.list_triggers() == [rec] and any_store.list_triggers("other") == []
    assert any_store.last_tick("trg_1|* * * * *|UTC", 100.0) == 100.0
    assert any_store.last_tick("trg_10|* * * * *|UTC", 100.0) == 100.0
    any_store.admit([Admission(source="", id="", records=[], schedule="trg_1|* * * * *|UTC", tick=160.0)], time.time())
    assert any_store.delete_trigger("trg_1") and not any_store.delete_trigger("trg_1")
    assert any_store.last_tick("trg_1|* * * * *|UTC", 500.0) == 500.0  # its schedule's mark went with it
    assert any_store.last_tick("trg_10|* * * * *|UTC", 500.0) == 100.0  # not another trigger's


def test_two_triggers_of_a_function_added_at_once_with_one_name_are_one(any_store: Store) -> None:
    """The name is checked and the trigger written under one lock: of two adds racing, one is a Conflict naming the other."""
    from spanfaas.errors import Conflict

    def add(i: int) -> None:
        try:
            any_store.put_trigger(TriggerRecord(id=f"trg_n{i}", function="fn", trigger=Trigger(name="nightly"), created_at=1.0))
        except Conflict as exc:
            refused.append(str(exc))

    refused: list[str] = []
    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [kept] = any_store.list_triggers("fn")
    assert len(refused) == 3 and all(f"'{kept.id}'" in m and "'nightly'" in m for m in refused), refused
    any_store.put_trigger(TriggerRecord(id="trg_o", function="other", trigger=Trigger(name="nightly"), created_at=1.0))
    any_store.put_trigger(TriggerRecord(id="trg_u1", function="fn", trigger=Trigger(), created_at=1.0))
    any_store.put_trigger(TriggerRecord(id="trg_u2", function="fn", trigger=Trigger(), created_at=1.0))
    assert len(any_store.list_triggers("fn")) == 3


def test_removing_a_function_drops_its_schedules_marks(any_store: Store) -> None:
    """Its manifest triggers' marks (``<function>:…``) and its API triggers' go with it: a
    redeploy under the same name starts afresh, not from the ticks of its absence."""
    from spanfaas.model import FunctionSpec

    any_store.put_function("job", "a" * 64, FunctionSpec(name="job"))
    any_store.put_trigger(TriggerRecord(id="trg_j", function="job", trigger=Trigger(schedule="* * * * *"), created_at=1.0))
    keys = ["job:0|* * * * *|UTC", "job:nightly|0 3 * * *|UTC", "trg_j|* * * * *|UTC", "jobs:0|* * * * *|UTC"]
    for key in keys:
        assert any_store.last_tick(key, 100.0) == 100.0
    assert any_store.delete_function("job")
    assert [any_store.last_tick(k, 500.0) for k in keys] == [500.0, 500.0, 500.0, 100.0]  # not another function's


def test_stream_groups_are_remembered(any_store: Store) -> None:
    key = "redis://127.0.0.1:6379/0|orders|spanfaas"
    assert not any_store.stream_group_known(key)
    any_store.remember_stream_group(key, 1.0)
    any_store.remember_stream_group(key, 2.0)  # again (every gateway of the group, every start): no error
    assert any_store.stream_group_known(key) and not any_store.stream_group_known(key + "-2")


def test_dead_letters_and_replay(any_store: Store) -> None:
    letter = DeadLetter(id="inv1", function="fn", event=EVENT, content_type="application/cloudevents+json",
                        payload=b'{"a":1}', error=ErrorInfo(kind="error", type="ValueError", message="no"),
                        attempts=3, created_at=1.0, failed_at=2.0)  # fmt: skip
    any_store.put_dead_letter(letter)
    any_store.put_dead_letter(letter)  # a redelivered failure replaces it
    assert any_store.list_dead_letters() == [letter] and any_store.get_dead_letter("inv1") == letter
    again = inv(payload=letter.payload)
    assert any_store.replay_dead_letter("inv1", again) == "undeployed"  # "fn" is not deployed: kept
    assert any_store.list_dead_letters() == [letter] and any_store.get_invocation(again.id) is None
    any_store.put_function("fn", "a" * 64, FunctionSpec(name="fn"))
    assert any_store.replay_dead_letter("inv1", again) == "queued"
    assert any_store.replay_dead_letter("inv1", inv()) == "gone"
    assert any_store.list_dead_letters() == [] and any_store.get_invocation(again.id) is not None


def test_dead_letters_page_after_a_position_in_a_total_order(any_store: Store) -> None:
    """Newest first by failed_at, then id: a page after (failed_at, id) of the last of the one
    before neither skips nor repeats letters that failed at the same moment."""
    at = {"d1": 1.0, "d2": 2.0, "d3": 2.0, "d4": 2.0, "d5": 3.0}
    for i, t in at.items():
        fn = "other" if i == "d4" else "fn"
        any_store.put_dead_letter(DeadLetter(id=i, function=fn, event=EVENT, content_type="x", failed_at=t))
    pages, after = [], None
    while page := any_store.list_dead_letters(None, 2, after):
        pages.append([d.id for d in page])
        after = (page[-1].failed_at, page[-1].id)
    assert pages == [["d5", "d4"], ["d3", "d2"], ["d1"]]
    assert [d.id for d in any_store.list_dead_letters("fn", 10, (2.0, "d4"))] == ["d3", "d2", "d1"]


async def test_an_event_the_store_refuses_to_queue_fails_alone(any_store: Store) -> None:
    """Events admitted together share a transaction: one the store refused (a value it
    cannot take) failed every publisher of the batch."""
    admitter = Admitter(any_store)
    good = [Admission(source="/s", id=f"e{i}", records=[inv()], window=60) for i in (1, 2, 4)]
    bad = Admission(source="/s", id="e3", records=[inv(content_type="text/" + os.fsdecode(b"\xff"))], window=60)
    outcomes = await asyncio.gather(*(admitter.admit([a]) for a in (good[0], good[1], bad, good[2])), return_exceptions=True)
    assert outcomes[:2] + outcomes[3:] == [[True]] * 3, outcomes
    assert isinstance(outcomes[2], RecordRefused), outcomes[2]
    assert "the store refused the event 'e3' from '/s': UnicodeEncodeError" in str(outcomes[2]), outcomes[2]
    assert {r.id for r in any_store.list_invocations("fn")} == {a.records[0].id for a in good}


def test_an_admission_whose_records_are_refused_stores_its_dead_letters_instead(any_store: Store) -> None:
    """A tick or stream entry whose invocation the store refused was lost (or failed its whole
    group): its dead letter is stored in the same transaction, after the same checks (the tick's
    mark moves: never kept twice), with the reason; the other admissions are queued."""
    now = time.time()
    any_store.last_tick("sch", now - 100)
    bad = inv(logs=os.fsdecode(b"\xff"))  # text no store can encode
    letter = DeadLetter(id=bad.id, function="fn", event=EVENT, content_type="application/json", payload=b"{}",
                        error=ErrorInfo(kind="infra", type="ValueRefused", message="not queued"))  # fmt: skip
    good = inv()
    out = any_store.admit([
        Admission(source="/s", id="t1", records=[bad], schedule="sch", tick=now - 50, letters=[letter]),
        Admission(source="/s", id="e2", records=[good], window=60, letters=[letter]),
    ], now)  # fmt: skip
    assert isinstance(out[0], Refused) and "UnicodeEncodeError" in out[0].reason and out[1] is True, out
    [kept] = any_store.list_dead_letters("fn")
    assert kept.id == bad.id and kept.error is not None and kept.error.message.startswith("not queued: UnicodeEncodeError")
    assert any_store.get_invocation(bad.id) is None and any_store.get_invocation(good.id) is not None
    assert any_store.last_tick("sch", 0) == now - 50  # the tick is spent: looked at again, not kept again
    assert any_store.admit([Admission(source="/s", id="t1", records=[bad], schedule="sch", tick=now - 50, letters=[letter])], now) == [False]


@pytest.mark.postgres
def test_a_replay_waits_for_a_remove_of_its_function_under_way(postgres_db: str) -> None:
    """Two gateways sharing PostgreSQL: a replay on one while `spanfaas rm` on the other was
    removing its function saw the function (the remove not yet committed), queued an invocation
    of it, and dropped the dead letter.  Now it waits for the remove (the function's lock), finds
    the function gone, and keeps the dead letter."""
    import psycopg

    from spanfaas.store.postgres import PostgresStore

    replaying, removing = PostgresStore(postgres_db), PostgresStore(postgres_db)
    try:
        replaying.put_function("fn", "a" * 64, FunctionSpec(name="fn"))
        letter = DeadLetter(id="inv1", function="fn", event=EVENT, content_type="application/json", payload=b"{}")
        replaying.put_dead_letter(letter)
        inside, go_on = threading.Event(), threading.Event()

        def hold(cur: object, what: str) -> None:  # in delete_function's transaction, its row deleted
            inside.set()
            assert go_on.wait(60)

        removing._changed = hold  # type: ignore[method-assign]
        rm = threading.Thread(target=removing.delete_function, args=("fn",))
        rm.start()
        assert inside.wait(60)
        again = inv()
        done: list[str] = []
        replay = threading.Thread(target=lambda: done.append(replaying.replay_dead_letter("inv1", again)))
        replay.start()
        with psycopg.connect(postgres_db, autocommit=True) as watch:  # until it waits for the lock, or is done
            deadline = time.monotonic() + 60
            while not done and time.monotonic() < deadline:
                waiting = watch.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()
                if waiting and waiting[0]:
                    break
                time.sleep(0.01)
        go_on.set()
        rm.join(60)
        replay.join(60)
        assert done == ["undeployed"], done
        assert replaying.get_dead_letter("inv1") == letter and replaying.get_invocation(again.id) is None
    finally:
        go_on.set()
        replaying.close()
        removing.close()


def _other(store: Store) -> Store:
    """A second handle on ``store``'s database, as a second gateway has."""
    return SQLiteStore(store.path) if isinstance(store, SQLiteStore) else type(store)(store.url)  # type: ignore[attr-defined]


NIGHTLY = FunctionSpec(name="fn", triggers=[Trigger(type="a"), Trigger(name="nightly", schedule="0 3 * * *")])


def test_an_api_trigger_named_as_a_trigger_of_the_stored_manifest_is_a_conflict_naming_it(any_store: Store) -> None:
    """The store checks the names of the manifest of the function's latest stored version, whichever
    gateway stored it (a gateway's own cache may lack the version, or hold an older one)."""
    from spanfaas.errors import Conflict

    any_store.put_function("fn", "a" * 64, FunctionSpec(name="fn"))
    any_store.put_trigger(TriggerRecord(id="trg_1", function="fn", trigger=Trigger(name="daily"), created_at=1.0))  # v1 has no names
    any_store.put_function("fn", "b" * 64, NIGHTLY)
    with pytest.raises(Conflict) as exc:
        any_store.put_trigger(TriggerRecord(id="trg_2", function="fn", trigger=Trigger(name="nightly"), created_at=1.0))
    assert "'fn:nightly'" in str(exc.value) and "manifest" in str(exc.value), exc.value
    assert [t.id for t in any_store.list_triggers("fn")] == ["trg_1"]
    any_store.put_trigger(TriggerRecord(id="trg_3", function="other", trigger=Trigger(name="nightly"), created_at=1.0))  # another function's


def test_a_version_declaring_the_name_of_an_api_trigger_is_a_conflict_naming_both(any_store: Store) -> None:
    from spanfaas.errors import Conflict

    any_store.put_function("fn", "a" * 64, FunctionSpec(name="fn"))
    any_store.put_trigger(TriggerRecord(id="trg_1", function="fn", trigger=Trigger(name="nightly"), created_at=1.0))
    with pytest.raises(Conflict) as exc:
        any_store.put_function("fn", "b" * 64, NIGHTLY)
    detail = str(exc.value)
    assert "'fn:nightly' (triggers[1])" in detail and "'trg_1'" in detail and "spanfaas triggers rm trg_1" in detail, detail
    got = any_store.get_function("fn")
    assert got is not None and got.version == 1  # nothing stored


def test_a_deploy_and_an_api_add_of_one_trigger_name_at_once_one_wins(any_store: Store) -> None:
    """Both checked their names, then both wrote (two triggers 'nightly' on one function): the store
    checks and writes under one lock, so of a version declaring a name and an API trigger of that
    name, written at once through two gateways, one is stored and the other is a Conflict naming both."""
    from spanfaas.errors import Conflict

    other = _other(any_store)
    try:
        for round in range(12):
            name = f"fn{round}"
            any_store.put_function(name, "a" * 64, FunctionSpec(name=name))
            spec = FunctionSpec(name=name, triggers=[Trigger(name="nightly", schedule="0 3 * * *")])
            barrier = threading.Barrier(2)
            won: list[str] = []
            lost: list[str] = []

            def run(what: str, write: Any) -> None:
                barrier.wait()
                try:
                    write()
                    won.append(what)
                except Conflict as exc:
                    lost.append(str(exc))

            trigger = TriggerRecord(id=f"trg_{round}", function=name, trigger=Trigger(name="nightly"), created_at=1.0)
            threads = [
                threading.Thread(target=run, args=("version", lambda: any_store.put_function(name, "b" * 64, spec))),
                threading.Thread(target=run, args=("trigger", lambda: other.put_trigger(trigger))),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(won) == 1 and len(lost) == 1, (round, won, lost)
            assert f"'{name}:nightly'" in lost[0], lost[0]
            stored = any_store.get_function(name)
            assert stored is not None
            if won == ["version"]:
                assert stored.version == 2 and any_store.list_triggers(name) == []
                assert "manifest" in lost[0], lost[0]
            else:
                assert stored.version == 1 and [t.id for t in any_store.list_triggers(name)] == [trigger.id]
                assert f"'{trigger.id}'" in lost[0], lost[0]
    finally:
        other.close()
