"""Schedules: cron ticks in a time zone, missed ticks after a pause per policy,
never twice for the same tick (restarts, two gateways) — on a real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from spanfaas.config import EventSettings
from spanfaas.events.schedule import ScheduleSource, due_ticks
from spanfaas.events.service import EventService
from spanfaas.model import Trigger, TriggerRecord
from spanfaas.store import SQLiteStore

T0 = datetime(2024, 3, 30, 12, 0, 0, tzinfo=UTC).timestamp()  # a Saturday, before a DST change


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_due_ticks_in_a_time_zone_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2024, 3, 30, 0, 0, tzinfo=berlin).timestamp()
    end = datetime(2024, 4, 1, 12, 0, tzinfo=berlin).timestamp()
    ticks = due_ticks("0 9 * * *", "Europe/Berlin", start, end, 10)
    assert [t.isoformat() for t in ticks] == [
        "2024-03-30T09:00:00+01:00", "2024-03-31T09:00:00+02:00", "2024-04-01T09:00:00+02:00",
    ]  # fmt: skip
    assert due_ticks("0 9 * * *", "Europe/Berlin", start, end, 1)[0].day == 1  # the newest
    assert due_ticks("* * * * * */10", "UTC", T0, T0 + 30, 10)[-1].timestamp() == T0 + 30  # a tick at `now` is due



def test_a_fixed_time_tick_in_the_repeated_hour_fires_once() -> None:
    """Autumn DST: 02:00-03:00 happens twice in Berlin; a job at 02:30 runs once that
    night (as cron does), while wildcard-hour schedules keep their pace through both."""
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2024, 10, 26, 12, 0, tzinfo=berlin).timestamp()
    end = datetime(2024, 10, 28, 12, 0, tzinfo=berlin).timestamp()
    ticks = due_ticks("30 2 * * *", "Europe/Berlin", start, end, 10)
    assert [t.isoformat() for t in ticks] == ["2024-10-27T02:30:00+02:00", "2024-10-28T02:30:00+01:00"]
    assert [t.isoformat() for t in due_ticks("@daily", "Europe/Berlin", start, end, 10)] == [
        "2024-10-27T00:00:00+02:00", "2024-10-28T00:00:00+01:00",
    ]  # fmt: skip
    # looked at between the two 02:30s (the first already fired): nothing more that night
    first = datetime(2024, 10, 27, 2, 30, tzinfo=berlin).timestamp()
    assert due_ticks("30 2 * * *", "Europe/Berlin", first, first + 3600 + 60, 10) == []
    # an hourly job runs in both passes of the hour: each is an hour after the last
    hourly = due_ticks("30 * * * *", "Europe/Berlin", first - 1, first + 3600 + 60, 10)
    assert [t.timestamp() - first for t in hourly] == [0.0, 3600.0]

def make(tmp_path: Path, triggers: list[TriggerRecord], clock: Clock, store: SQLiteStore) -> tuple[EventService, ScheduleSource]:
    settings = EventSettings(catchup_limit=5)
    service = EventService(settings, store, CollectorRegistry(), functions=dict, wake=lambda: None)
    source = ScheduleSource(settings, store, service.metrics, lambda: triggers, clock=clock)
    return service, source


def ticks_of(store: SQLiteStore) -> list[str]:
    out = []
    for r in store.list_invocations("job", limit=1000):
        doc = msgspec.json.decode(store.get_invocation(r.id).payload)  # type: ignore[union-attr]
        assert doc["type"] == "dev.spanfaas.schedule.tick"
        out.append(doc["id"])
    return sorted(out)


def minutely(missed: str) -> list[TriggerRecord]:
    return [TriggerRecord(id="job:0", function="job", trigger=Trigger(schedule="* * * * *", missed=missed), origin="manifest")]  # type: ignore[arg-type]


@pytest.mark.parametrize(("missed", "fired_after_pause"), [("skip", 0), ("latest", 1), ("all", 5)])
async def test_missed_ticks_after_a_restart(tmp_path: Path, missed: str, fired_after_pause: int) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0 + 0.5)
        service, source = make(tmp_path, minutely(missed), clock, store)
        await source.check(service)  # first sight: starts from now, fires nothing
        assert ticks_of(store) == []
        clock.now = T0 + 60.2  # on time
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]
        await source.check(service)  # the same tick again: nothing
        assert len(ticks_of(store)) == 1

        # "restart" 10 minutes later: a new source and service on the same store
        clock.now = T0 + 11 * 60 + 30  # past 12:11 by more than ON_TIME: every due tick was missed
        service, source = make(tmp_path, minutely(missed), clock, store)
        await source.check(service)
        fired = ticks_of(store)[1:]
        assert len(fired) == fired_after_pause
        if fired:
            assert fired[-1] == "2024-03-30T12:11:00+00:00"  # the newest missed tick is among them
        await source.check(service)
        assert len(ticks_of(store)) == 1 + fired_after_pause  # never twice
    finally:
        store.close()


async def test_two_gateways_fire_each_tick_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0)
        a = make(tmp_path, minutely("all"), clock, store)
        b = make(tmp_path, minutely("all"), clock, store)
        for svc, src in (a, b):
            await src.check(svc)
        for minute in range(1, 4):
            clock.now = T0 + minute * 60 + 0.1
            await asyncio.gather(a[1].check(a[0]), b[1].check(b[0]))
        assert ticks_of(store) == [f"2024-03-30T12:0{m}:00+00:00" for m in range(1, 4)]
    finally:
        store.close()


async def test_tick_event_and_time_zone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0)
        trig = [TriggerRecord(id="trg_x", function="job", trigger=Trigger(schedule="30 13 * * *", timezone="Europe/Berlin"))]
        service, source = make(tmp_path, trig, clock, store)
        await source.check(service)
        clock.now = T0 + 30 * 60  # 12:30 UTC is 13:30 in Berlin (CET)
        await source.check(service)
        [inv] = store.list_invocations("job")
        full = store.get_invocation(inv.id)
        assert full is not None and full.event is not None
        assert full.event.attributes["source"] == "spanfaas/schedule/trg_x" and full.event.proxy == "schedule"
        assert msgspec.json.decode(full.payload)["data"] == {
            "schedule": "30 13 * * *", "timezone": "Europe/Berlin", "tick": "2024-03-30T13:30:00+01:00", "missed": False,
        }  # fmt: skip
    finally:
        store.close()


@pytest.mark.parametrize("how", ["trigger deleted", "function removed"])
async def test_a_trigger_deleted_and_made_again_starts_afresh(tmp_path: Path, how: str) -> None:
    """The ticks missed while a schedule did not exist are not caught up when a
    trigger of the same id comes back (only those missed while the gateway was
    down): a trigger deleted through the API, or a manifest trigger whose
    function was removed and deployed again."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0 + 0.5)
        listed = minutely("all")
        service, source = make(tmp_path, listed, clock, store)
        await source.check(service)
        clock.now = T0 + 60.2
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]
        if how == "trigger deleted":
            store.delete_trigger("job:0")
        listed.clear()
        clock.now = T0 + 5 * 60 + 0.2
        await source.check(service)
        listed.extend(minutely("all"))  # made again, same id and schedule
        clock.now = T0 + 10 * 60 + 0.2
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]  # nothing caught up from its absence
        clock.now = T0 + 11 * 60 + 0.2
        await source.check(service)
        assert ticks_of(store)[1:] == ["2024-03-30T12:11:00+00:00"]
    finally:
        store.close()


@pytest.mark.parametrize("restart", [False, True])
async def test_a_function_removed_and_deployed_again_starts_afresh(tmp_path: Path, restart: bool) -> None:
    """``spanfaas rm`` then a redeploy of the same name, with no look at the schedules while it
    was gone (between two looks, or with the gateway restarted): the marks stayed in the store,
    and the schedule caught up the ticks of the function's absence."""
    from spanfaas.model import FunctionSpec

    store = SQLiteStore(tmp_path / "s.db")
    try:
        store.put_function("job", "a" * 64, FunctionSpec(name="job"))
        clock = Clock(T0 + 0.5)
        listed = [msgspec.structs.replace(minutely("all")[0], created_at=1.0)]
        service, source = make(tmp_path, listed, clock, store)
        await source.check(service)
        clock.now = T0 + 60.2
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]
        assert store.delete_function("job")  # spanfaas rm
        clock.now = T0 + 5 * 60 + 0.2
        store.put_function("job", "a" * 64, FunctionSpec(name="job"))  # deployed again: a new version
        listed[0] = msgspec.structs.replace(listed[0], created_at=2.0)
        if restart:
            service, source = make(tmp_path, listed, clock, store)
        clock.now = T0 + 10 * 60 + 0.2
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]  # nothing caught up from its absence
        clock.now = T0 + 11 * 60 + 0.2
        await source.check(service)
        assert ticks_of(store)[1:] == ["2024-03-30T12:11:00+00:00"]  # and it fires on
    finally:
        store.close()


async def test_a_schedule_without_past_or_future_ticks_does_not_stop_the_others(tmp_path: Path) -> None:
    """One schedule croniter could not step back from ("at 00:00 on 1 January 2030", seen in
    2024) raised out of the loop on every look: no schedule of the platform fired any more,
    and the log said only 'schedules: CroniterBadDateError: failed to find prev date'."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0 + 0.5)
        once = TriggerRecord(id="trg_once", function="job", trigger=Trigger(schedule="0 0 1 1 * 0 2030"))
        service, source = make(tmp_path, [once, *minutely("latest")], clock, store)
        await source.check(service)
        clock.now = T0 + 60.2
        wait = await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]
        assert 0 < wait <= 60
    finally:
        store.close()


async def test_a_stored_schedule_that_can_never_fire_is_logged_once_and_the_others_fire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A '0 3 31 2 *' stored before such schedules were refused: it is named in the log, once,
    with how to remove it, and the other schedules go on."""
    store = SQLiteStore(tmp_path / "s.db")
    try:
        feb31 = Trigger(schedule="0 3 * * *")
        msgspec.structs.force_setattr(feb31, "schedule", "0 3 31 2 *")
        clock = Clock(T0 + 0.5)
        broken = TriggerRecord(id="trg_feb31", function="job", trigger=feb31)
        service, source = make(tmp_path, [broken, *minutely("latest")], clock, store)
        await source.check(service)
        clock.now = T0 + 60.2
        await source.check(service)
        assert ticks_of(store) == ["2024-03-30T12:01:00+00:00"]
        logged = [r.getMessage() for r in caplog.records if "trg_feb31" in r.getMessage()]
        assert len(logged) == 1 and "spanfaas triggers rm trg_feb31" in logged[0], logged
    finally:
        store.close()


def refuse_tick(store: SQLiteStore, tick: str) -> None:
    """The store refuses the invocation of one tick (a constraint), as it may refuse a value."""
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(
            "CREATE TRIGGER refuse_tick BEFORE INSERT ON invocations "
            f"WHEN instr(CAST(NEW.payload AS TEXT), '\"tick\":\"{tick}\"') > 0 "
            "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: refused tick'); END"
        )
    finally:
        db.close()


@pytest.mark.parametrize("refused", ["2024-03-30T12:03:00+00:00", "2024-03-30T12:05:00+00:00"])
async def test_a_tick_the_store_refuses_fails_alone_and_is_kept_as_a_dead_letter(
    tmp_path: Path, refused: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ticks of a look were admitted in one group: one tick the store refused (RecordRefused)
    failed them all, on every look, and the schedule fired nothing any more; now the others are
    queued, and the refused one is a dead letter with the reason (logged), fired at most once."""
    caplog.set_level(logging.INFO, logger="spanfaas.events")
    store = SQLiteStore(tmp_path / "s.db")
    try:
        clock = Clock(T0 + 0.5)
        service, source = make(tmp_path, minutely("all"), clock, store)
        await source.check(service)  # first sight: from now
        refuse_tick(store, refused)
        clock.now = T0 + 5 * 60 + 30  # 12:01 … 12:05 are due, in one look
        await source.check(service)
        due = [f"2024-03-30T12:0{m}:00+00:00" for m in range(1, 6)]
        assert ticks_of(store) == [t for t in due if t != refused], caplog.text[-2000:]
        [letter] = store.list_dead_letters("job")
        assert letter.event.attributes["id"] == refused and letter.event.proxy == "schedule"
        assert letter.error is not None and "refused tick" in letter.error.message
        assert msgspec.json.decode(letter.payload)["data"]["tick"] == refused
        said = [r.getMessage() for r in caplog.records if refused in r.getMessage()]
        assert len(said) == 1 and letter.id in said[0] and "dead letter" in said[0], said
        assert "already fired" not in caplog.text  # it was not: its dead letter stands for it

        await source.check(service)  # looked at again, and after a restart: not again
        service, source = make(tmp_path, minutely("all"), clock, store)
        await source.check(service)
        assert len(store.list_dead_letters("job")) == 1 and len(ticks_of(store)) == 4

        clock.now = T0 + 6 * 60 + 0.2  # and the schedule fires on
        await source.check(service)
        assert ticks_of(store)[-1] == "2024-03-30T12:06:00+00:00"
    finally:
        store.close()
