"""``EventService``: the event path of one gateway, wired together.

    proxies (HTTP: cloudevents, webhook, s3 · pull: redis, schedule)
        └─ publish(kind, events) ─▶ router (triggers) ─▶ admitter (dedup + enqueue, one transaction)
                                                              └─▶ the durable queue ─▶ dispatcher
    dispatcher ─▶ delivery.settle(record): delivered | retried with backoff | dead letter

The gateway builds one, starts it after its dispatcher and stops it first;
it knows the gateway only through the callables it is given.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from prometheus_client import CollectorRegistry

from spanfaas.config import EventSettings
from spanfaas.errors import (
    Conflict,
    FunctionNotFound,
    InfraUnavailable,
    NotFound,
    SpanfaasError,
    ValueRefused,
    like_deployed,
    plural,
)
from spanfaas.events.admit import Admitter
from spanfaas.events.base import (
    CE_JSON,
    CloudEvent,
    Published,
    attributes_of,
    make_event,
    structured,
)
from spanfaas.events.cloudevents_http import CloudEventsProxy
from spanfaas.events.delivery import DeadLetterNotFound, Delivery, InvocationIds, keep
from spanfaas.events.metrics import EventMetrics
from spanfaas.events.redis_streams import RedisStreamSource
from spanfaas.events.router import Router, manifest_triggers
from spanfaas.events.s3 import S3Proxy
from spanfaas.events.schedule import TICK_TYPE, ScheduleSource, Tick
from spanfaas.events.webhook import WebhookProxy
from spanfaas.model import (
    ErrorInfo,
    Event,
    FunctionRecord,
    InvocationRecord,
    Trigger,
    TriggerRecord,
)
from spanfaas.store import Admission, DeadLetter, RecordRefused, Refused, Store

__all__ = ["EventService", "TriggerNotFound"]

log = logging.getLogger("spanfaas.events")

TEST_STALL_ENV = "SPANFAAS_TEST_STALL"
"""Test hook: the event path stops for good at this point (see ``RedisStreamSource.stall_at``)."""


class TriggerNotFound(NotFound):
    slug, title = "trigger-not-found", "Trigger not found"


class EventService:
    def __init__(
        self,
        settings: EventSettings,
        store: Store,
        registry: CollectorRegistry,
        *,
        functions: Callable[[], Mapping[str, FunctionRecord]],
        wake: Callable[[], None],
        new_id: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.functions = functions
        self.wake = wake
        self.new_id = new_id or InvocationIds()
        self.metrics = EventMetrics(registry)
        self.router = Router(store, functions)
        self.admitter = Admitter(store)
        stall = os.environ.get(TEST_STALL_ENV, "")
        self.delivery = Delivery(settings, store, self.metrics, self.new_id, wake, stall_at=stall)
        self.cloudevents = CloudEventsProxy()
        self.s3 = S3Proxy()
        self.webhooks = {w.name: WebhookProxy(w) for w in settings.webhooks}
        self.streams = [RedisStreamSource(c, self.metrics, store, stall_at=stall) for c in settings.redis]
        self.schedules = ScheduleSource(settings, store, self.metrics, lambda: self.router.current().schedules)
        self._tasks: list[asyncio.Task[None]] = []
        self.before_replay: Callable[[DeadLetter], Awaitable[None]] | None = None
        """Test hook: awaited by ``replay`` after it found the function deployed, before it queues."""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.router.reload()
        self._tasks = [asyncio.create_task(s.run(self), name=f"spanfaas-events-redis-{s.name}") for s in self.streams]
        self._tasks.append(asyncio.create_task(self.schedules.run(self), name="spanfaas-events-schedules"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="spanfaas-events-housekeeping"))

    async def stop(self) -> None:
        """Stop the sources: stream readers finish their current read, the rest is cancelled."""
        for s in self.streams:
            s.stop()
        readers = self._tasks[: len(self.streams)]
        if readers:
            await asyncio.wait(readers, timeout=max(s.config.block for s in self.streams) + 1.0)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2.0)
            for task in stuck:
                log.error("event task %s did not stop; leaving it behind", task.get_name())
        self._tasks = []

    async def _housekeeping(self) -> None:
        """Keep the trigger table fresh; forget (source, id) pairs older than the window."""
        next_prune = 0.0
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.router.table()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + 60.0
                    await asyncio.to_thread(self.store.prune_seen, time.time() - self.settings.dedup_window)
            except Exception as exc:  # the store may be down for a while; the next round retries
                log.warning("events housekeeping: %s: %s", type(exc).__name__, exc)

    # -- the event path ------------------------------------------------------------------

    async def publish(self, proxy: str, events: Sequence[CloudEvent], *, keep_refused: bool = False) -> list[Published]:
        """Route the events and commit their invocations; returns when they are in the store.

        Each event on its own: one the store refuses (a value it cannot hold) is not queued,
        its ``Published.error`` says why, and the others are.  ``keep_refused`` (a source with
        nobody to tell: a stream): its invocations go to the dead-letter store instead, and the
        error's ``dead_letters`` names them."""
        self.metrics.translated.labels(proxy).inc(len(events))
        table = await self.router.table()
        now = time.time()
        out: list[Published] = []
        admissions: list[Admission] = []
        slots: list[int] = []
        for ev in events:
            attrs = attributes_of(ev)
            published = Published(id=attrs["id"], source=attrs["source"], type=attrs["type"])
            out.append(published)
            matches = table.match(attrs)
            if not matches:
                self.metrics.unmatched.labels(proxy).inc()
                continue
            payload = structured(ev, attrs)
            records = [
                InvocationRecord(
                    id=self.new_id(), function=m.function, status="queued", mode="async", content_type=CE_JSON,
                    payload=payload, created_at=now, event=Event(attributes=attrs, proxy=proxy, trigger=m.id),
                )  # fmt: skip
                for m in matches
            ]
            admissions.append(
                Admission(source=published.source, id=published.id, records=records, window=self.settings.dedup_window,
                          letters=_letters(records) if keep_refused else [])
            )  # fmt: skip
            slots.append(len(out) - 1)
        if admissions:
            try:
                results = await self.admitter.admit_each(admissions)
            except SpanfaasError:
                raise
            except Exception as exc:  # the store failed: nothing was queued; the sender should retry
                log.error("could not queue %s from %s: %s: %s", plural(len(admissions), "event"), proxy, type(exc).__name__, exc)
                raise InfraUnavailable(f"the store could not queue the events ({type(exc).__name__}); nothing was accepted, retry") from None
            for i, (slot, admitted) in enumerate(zip(slots, results)):
                if isinstance(admitted, Refused | RecordRefused):
                    refused = ValueRefused(
                        f"{admitted.reason if isinstance(admitted, Refused) else admitted}; the event was not queued, "
                        "and would be refused again as it is: change that value of the event (an attribute or its "
                        "data), then send it again"
                    )  # fmt: skip
                    problem = out[slot].error = refused.to_problem()
                    self.metrics.rejected.labels(proxy).inc()
                    if isinstance(admitted, Refused):
                        self.metrics.dead_lettered.labels(proxy).inc(len(admissions[i].letters))
                        problem["dead_letters"] = [d.id for d in admissions[i].letters]
                    elif keep_refused:  # refused before its invocations (its de-duplication): kept apart
                        problem["dead_letters"] = await self._keep(proxy, admissions[i], admitted)
                elif admitted:
                    out[slot].invocations = [r.id for r in admissions[i].records]
                else:
                    out[slot].duplicate = True
                    self.metrics.duplicates.labels(proxy).inc()
            self.wake()
        return out

    async def fire(self, trigger: TriggerRecord, key: str, ticks: list[Tick], mark: float) -> int:
        """Schedules: one invocation per tick (each at most once), then the mark moves to ``mark``;
        the ticks fired (a tick the store refused counts: its dead letter was stored in its stead)."""
        t = trigger.trigger
        now = time.time()
        admissions: list[Admission] = []
        for tick in ticks:
            at = tick.at.isoformat()
            event = make_event(
                {"specversion": "1.0", "id": at, "source": f"spanfaas/schedule/{trigger.id}", "type": TICK_TYPE,
                 "time": tick.at, "subject": trigger.id, "datacontenttype": "application/json"},
                {"schedule": t.schedule, "timezone": t.timezone, "tick": at, "missed": tick.missed},
            )  # fmt: skip
            attrs = attributes_of(event)
            record = InvocationRecord(
                id=self.new_id(), function=trigger.function, status="queued", mode="async", content_type=CE_JSON,
                payload=structured(event, attrs), created_at=now,
                event=Event(attributes=attrs, proxy=ScheduleSource.kind, trigger=trigger.id),
            )  # fmt: skip
            admissions.append(Admission(
                source=attrs["source"], id=at, records=[record], schedule=key, tick=tick.timestamp, letters=_letters([record]),
            ))  # fmt: skip
        if not ticks or ticks[-1].timestamp < mark:  # skipped ticks: only move the mark
            admissions.append(Admission(source="", id="", records=[], schedule=key, tick=mark))
        self.metrics.translated.labels(ScheduleSource.kind).inc(len(ticks))
        # Each tick on its own: one whose invocation the store refuses is kept as a dead letter in its
        # stead, in the transaction that moves the mark (so once, and not again after a restart).
        results = await self.admitter.admit_each(admissions)
        fired = sum(1 for a, ok in zip(admissions, results) if ok is True and a.records)
        if fired:
            self.wake()
        for a, result in zip(admissions, results):
            what = f"schedule {trigger.id} of function {trigger.function}: tick {a.id}"
            if isinstance(result, Refused):
                self.metrics.rejected.labels(ScheduleSource.kind).inc()
                self.metrics.dead_lettered.labels(ScheduleSource.kind).inc()
                log.error("%s was refused by the store, and kept as dead letter %s (`spanfaas events dlq ls`; replay it "
                          "once the cause is fixed): %s", what, a.records[0].id, result.reason)  # fmt: skip
            elif isinstance(result, RecordRefused):  # its mark itself was refused: the others fired
                self.metrics.rejected.labels(ScheduleSource.kind).inc()
                log.error("%s was not fired: %s", what, result)
        return fired + sum(1 for r in results if isinstance(r, Refused))  # a dead letter stands for its tick

    async def _keep(self, proxy: str, admission: Admission, refused: RecordRefused) -> list[str]:
        """Store the dead letters of an event whose admission the store refused; their ids.  One
        the store refuses too is kept bare (``delivery.keep``: its data is what it cannot hold)."""

        def why(exc: RecordRefused) -> str:
            return (f"the store refused to queue this event's invocation of function '{admission.records[0].function}' "
                    f"({refused}), and its dead letter ({exc}): kept without its data, it cannot be replayed; "
                    "send the event again once the cause is fixed")  # fmt: skip

        kept: list[str] = []
        for letter in _letters(admission.records, f"{refused}"):
            if await keep(self.store, letter, why) is None:
                log.error("event %r from %r (%s): the store refused it and its dead letter, it is lost: %s",
                          admission.id, admission.source, proxy, refused)  # fmt: skip
                continue
            kept.append(letter.id)
        self.metrics.dead_lettered.labels(proxy).inc(len(kept))
        return kept

    # -- triggers --------------------------------------------------------------------------

    async def list_triggers(self, function: str | None = None) -> list[TriggerRecord]:
        table = await self.router.reload()
        return [r for r in table.records if function is None or r.function == function]

    async def _deployed(self, function: str) -> bool:
        return function in self.functions() or await asyncio.to_thread(self.store.get_function, function) is not None

    def _deployed_names(self, function: str) -> str:
        return like_deployed(function, self.functions())

    async def add_trigger(self, function: str, trigger: Trigger) -> TriggerRecord:
        if not await self._deployed(function):
            raise FunctionNotFound(f"function '{function}' not found; {self._deployed_names(function)}")
        # A name is one trigger's, manifest or API: the store checks both as it writes, against the
        # function's latest stored version (this gateway may not serve it yet, or serve an older one).
        record = TriggerRecord(id="trg_" + secrets.token_hex(6), function=function, trigger=trigger, created_at=time.time())
        await asyncio.to_thread(self.store.put_trigger, record)
        await self.router.reload()
        return record

    async def remove_trigger(self, id: str) -> None:
        if await asyncio.to_thread(self.store.delete_trigger, id):
            await self.router.reload()
            return
        for f in self.functions().values():
            if any(t.id == id for t in manifest_triggers(f)):
                raise Conflict(
                    f"trigger '{id}' is declared in the manifest of function '{f.name}'; "
                    "remove it from its spanfaas.toml and deploy again"
                )
        raise TriggerNotFound(f"trigger '{id}' not found; `spanfaas triggers ls` lists them")

    # -- dead letters ------------------------------------------------------------------------

    async def dead_letters(
        self, function: str | None = None, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        """Newest first; ``after``: the position of the last of the page before."""
        return await asyncio.to_thread(self.store.list_dead_letters, function, limit, after)

    async def remove_dead_letter(self, id: str) -> None:
        """Remove a dead letter for good (its event is not run); ``DeadLetterNotFound`` naming it."""
        if not await asyncio.to_thread(self.store.discard_dead_letter, id):
            raise DeadLetterNotFound(f"no dead letter '{id}'; `spanfaas events dlq ls` lists them")

    async def replay(self, id: str) -> InvocationRecord:
        """Queue a dead letter again, once its function is deployed (else it stays, and the error says so).

        The store checks the function again in the transaction that queues it, under the lock
        its remove takes: a ``spanfaas rm`` meanwhile leaves no invocation of a removed function."""
        letter = await self.delivery.dead_letter(id)
        if not letter.function:  # an entry of a stream that was no event: nothing to run
            said = letter.error.message if letter.error else "it is no event"
            raise ValueRefused(f"dead letter '{id}' cannot be replayed: {said}")

        def undeployed() -> FunctionNotFound:
            return FunctionNotFound(
                f"dead letter '{id}' is for function '{letter.function}', which is not deployed; deploy it first, "
                f"then replay the dead letter (it is kept); {self._deployed_names(letter.function)}"
            )

        if not await self._deployed(letter.function):
            raise undeployed()
        if self.before_replay is not None:
            await self.before_replay(letter)
        return await self.delivery.replay(letter, undeployed)


_REFUSED = "the store refused to queue this event's invocation; replay it once the cause is fixed"


def _letters(records: list[InvocationRecord], reason: str = "") -> list[DeadLetter]:
    """The dead letters of invocations the store refused to queue (never run; replayable).
    Without ``reason``, the store adds it to each error message (``Admission.letters``)."""
    now = time.time()
    error = ErrorInfo(kind="infra", type="ValueRefused", message=f"{_REFUSED}: {reason}" if reason else _REFUSED)
    return [
        DeadLetter(
            id=r.id, function=r.function, event=r.event, content_type=r.content_type, payload=r.payload,
            error=error, attempts=0, created_at=r.created_at, failed_at=now,
        )  # fmt: skip
        for r in records
        if r.event is not None
    ]
