"""Schedules: triggers with a cron expression fire on their ticks, in their time zone.

The store keeps, per schedule, the last tick fired (``schedule_ticks``).  A
tick is fired by moving that mark forward *in the transaction that enqueues
its invocation* (compare-and-set), so a tick fires at most once — across
restarts, and across gateways sharing a PostgreSQL store.  Ticks that
passed while nobody was running are *missed*; on the next look the
trigger's ``missed`` policy decides: ``skip`` (none of them), ``latest``
(the most recent one) or ``all`` (each, oldest first, at most
``catchup_limit``).  A schedule seen for the first time starts from now.

A tick's CloudEvent: ``source`` ``spanfaas/schedule/<trigger id>``, ``id``
the tick's time (RFC 3339 in the schedule's zone), ``type``
``dev.spanfaas.schedule.tick``, ``data`` ``{schedule, timezone, tick, missed}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, CroniterError, croniter  # type: ignore[import-untyped]

from spanfaas.config import EventSettings
from spanfaas.events.metrics import EventMetrics
from spanfaas.model import TriggerRecord
from spanfaas.store import Store

__all__ = ["ON_TIME", "ScheduleSink", "ScheduleSource", "Tick", "due_ticks", "schedule_key"]

log = logging.getLogger("spanfaas.events")

ON_TIME = 10.0
"""Seconds after its time within which a tick counts as on time (not missed)."""
TICK_TYPE = "dev.spanfaas.schedule.tick"


@dataclass(frozen=True)
class Tick:
    at: datetime
    missed: bool

    @property
    def timestamp(self) -> float:
        return self.at.timestamp()


class ScheduleSink(Protocol):
    async def fire(self, trigger: TriggerRecord, key: str, ticks: list[Tick], mark: float) -> int:
        """Enqueue one invocation per tick and move the schedule's mark to ``mark``; the ticks fired
        (or kept as dead letters: refused by the store)."""
        ...


def schedule_key(record: TriggerRecord) -> str:
    """A schedule's identity in the store: a changed expression or zone is a new schedule."""
    t = record.trigger
    return f"{record.id}|{t.schedule}|{t.timezone}"


def due_ticks(expr: str, zone: str, last: float, now: float, limit: int) -> list[datetime]:
    """The ticks ``t`` with ``last < t <= now``: the newest ``limit`` of them, oldest first.

    When the clocks go back, a wall time of the repeated hour happens twice; as in
    cron, a fixed-time schedule (neither minute nor hour is a wildcard) fires only
    at the first, so a job "at 02:30" runs once that night."""
    tz = ZoneInfo(zone)
    it = croniter(expr, datetime.fromtimestamp(now + 1e-6, tz))
    fixed = _fixed_time(it)
    out: list[datetime] = []
    while len(out) < limit:
        try:
            t = it.get_prev(datetime)
        except CroniterBadDateError:  # no earlier tick at all (a schedule that starts in a later year)
            break
        if t.timestamp() <= last:
            break
        if fixed and _second_pass(t):
            continue
        out.append(t)
    out.reverse()
    return out


def _fixed_time(it: croniter) -> bool:
    minute, hour = it.expressions[0], it.expressions[1]
    return not str(minute).startswith("*") and not str(hour).startswith("*")


def _second_pass(t: datetime) -> bool:
    """Is ``t`` the second occurrence of its wall time (the repeated hour after the clocks went back)?"""
    first, second = t.replace(fold=0), t.replace(fold=1)
    return first.utcoffset() != second.utcoffset() and t.timestamp() == second.timestamp()


class ScheduleSource:
    kind = "schedule"

    def __init__(
        self,
        settings: EventSettings,
        store: Store,
        metrics: EventMetrics,
        schedules: Callable[[], list[TriggerRecord]],
        *,
        clock: Callable[[], float] = time.time,
        poll: float = 1.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.schedules = schedules
        self.clock = clock
        self.poll = poll
        self._marks: dict[str, float] = {}
        self._made: dict[str, float] = {}  # schedule key -> its trigger's created_at when the mark was read
        self._broken: dict[str, str] = {}  # trigger id -> the error last logged for it (logged once)

    async def run(self, sink: ScheduleSink) -> None:
        while True:
            try:
                wait = await self.check(sink)
            except Exception as exc:  # the store is down: look again later
                log.error("schedules: %s: %s", type(exc).__name__, exc)
                wait = self.poll
            await asyncio.sleep(wait)

    async def check(self, sink: ScheduleSink) -> float:
        """Fire what is due now; the seconds until the next look."""
        now = self.clock()
        wait = self.poll
        records = list(self.schedules())
        listed = {schedule_key(r) for r in records}
        gone = [k for k in self._marks if k not in listed]
        if gone:
            # Deleted, changed, or its function removed: one that comes back starts from
            # then, not from the ticks of its absence (missed means missed while down).
            await asyncio.to_thread(self.store.forget_schedules, gone)
            for key in gone:
                del self._marks[key]
                self._made.pop(key, None)
        for record in records:
            try:
                following = await self._check_one(sink, record, now)
            except CroniterError as exc:  # one schedule croniter cannot step through must not stop the others
                self._report(record, str(exc))
                continue
            if following is None:
                self._report(record, "no date to come matches it")
            else:
                wait = min(wait, max(following - self.clock(), 0.0) + 0.001)
        return wait

    def _report(self, record: TriggerRecord, why: str) -> None:
        """Say once (per trigger and reason) that a schedule will not fire, and how to remove it."""
        if self._broken.get(record.id) == why:
            return
        self._broken[record.id] = why
        fix = "in its spanfaas.toml and deploy again" if record.origin == "manifest" else f"or remove it: spanfaas triggers rm {record.id}"
        log.error("schedule %s of function %s (%r) will not fire: %s; change it %s",
                  record.id, record.function, record.trigger.schedule, why, fix)  # fmt: skip

    async def _check_one(self, sink: ScheduleSink, record: TriggerRecord, now: float) -> float | None:
        """Fire what is due of one schedule; the time of its next tick (None: it has none to come)."""
        t = record.trigger
        key = schedule_key(record)
        last = self._marks.get(key)
        if last is None or self._made.get(key) != record.created_at:
            # First sight, or a trigger made again (a manifest's: its function deployed again, maybe
            # removed in between, which dropped the mark from the store): the store's mark counts.
            last = self._marks[key] = await asyncio.to_thread(self.store.last_tick, key, now)
            self._made[key] = record.created_at
        limit = self.settings.catchup_limit if t.missed == "all" else 1
        due = due_ticks(t.schedule, t.timezone, last, now, limit)
        if due:
            ticks = [Tick(d, missed=d.timestamp() < now - ON_TIME) for d in due]
            if t.missed == "skip":
                ticks = [k for k in ticks if not k.missed]
            self.metrics.received.labels(self.kind).inc(len(ticks))
            fired = await sink.fire(record, key, ticks, due[-1].timestamp())
            if fired < len(ticks):
                log.info("schedule %s: %d of %d ticks were already fired (another gateway, or before a restart)",
                         record.id, len(ticks) - fired, len(ticks))  # fmt: skip
            self._marks[key] = max(due[-1].timestamp(), last)
        try:
            return float(croniter(t.schedule, datetime.fromtimestamp(now, ZoneInfo(t.timezone))).get_next(float))
        except CroniterBadDateError:  # its last tick has passed
            return None
