"""Delivery of event invocations: at least once, retries with backoff, dead letters.

The dispatcher runs an event's invocation like any async one and hands the
outcome to ``settle`` before recording it.  A failure — the function's own
or the platform's — is queued again after ``backoff * 2**(attempt-1)``
seconds (at most ``max_backoff``) until ``retries`` retries are spent (a run
started again because its gateway died is not one of them); then
the invocation is recorded as failed and a copy of it (payload, event,
last error) goes to the dead-letter store, from which ``replay`` queues it
again under a new invocation id.  A dead letter whose record the gateway died before
storing is removed when the invocation, run again, succeeds.

A dead letter the store refuses (a value of its data it cannot hold: it always
will) is kept bare in its stead (``keep``): its event's identity and why, with no
data and no function, so it is listed and never replayed empty.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable

import msgspec

from spanfaas.config import EventSettings
from spanfaas.errors import NotFound, SpanfaasError, ValueRefused, plural
from spanfaas.events.metrics import EventMetrics
from spanfaas.model import ErrorInfo, Event, InvocationRecord
from spanfaas.store import DeadLetter, RecordRefused, Store

__all__ = ["DeadLetterNotFound", "Delivery", "InvocationIds", "bare_letter", "keep"]

log = logging.getLogger("spanfaas.events")
_replace = msgspec.structs.replace


class InvocationIds:
    """Invocation ids: a random prefix per process and a counter (as the gateway makes them)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._count = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._count):016x}"


class DeadLetterNotFound(NotFound):
    slug, title = "dead-letter-not-found", "Dead letter not found"


class Delivery:
    def __init__(
        self,
        settings: EventSettings,
        store: Store,
        metrics: EventMetrics,
        new_id: Callable[[], str],
        wake: Callable[[], None],
        *,
        stall_at: str = "",
    ) -> None:
        self.stall_at = stall_at
        """Test hook (``SPANFAAS_TEST_STALL``): ``events.after-dead-letter`` stops a settle for good
        once the dead letter is stored and before the run's record is, so a test can kill the gateway there."""
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.new_id = new_id
        self.wake = wake

    def delay(self, attempts: int) -> float:
        """Seconds before retry number ``attempts`` (1, 2, …)."""
        return float(min(self.settings.backoff * (2 ** max(attempts - 1, 0)), self.settings.max_backoff))

    async def settle(self, record: InvocationRecord, *, final: bool = False) -> InvocationRecord:
        """The record to store for a finished event invocation (queued again when it will be retried).

        ``final``: the invocation will not run again whatever its retries (it took the
        gateway down too often): a failure goes straight to the dead-letter store."""
        event = record.event
        if event is None:
            return record
        if record.status == "succeeded":
            # (reclaims too: a run that ended at once may not have been marked started)
            if (record.reruns or record.reclaims) and await asyncio.to_thread(self.store.discard_dead_letter, record.id):
                # An earlier run's dead letter was stored, and the gateway died before its record was.
                log.info("event %s from %s: invocation %s succeeded when run again; its dead letter is removed",
                         event.attributes.get("id"), event.attributes.get("source"), record.id)  # fmt: skip
            self.metrics.delivered.labels(event.proxy).inc()
            return record
        failures = record.attempts - record.reruns  # a re-run after a gateway's crash is not a retry
        if failures <= self.settings.retries and not final:
            delay = self.delay(failures)
            self.metrics.retried.labels(event.proxy).inc()
            log.info("event %s from %s: invocation %s failed (attempt %d of %d), retrying in %.2fs",
                     event.attributes.get("id"), event.attributes.get("source"), record.id, failures,
                     self.settings.retries + 1, delay)  # fmt: skip
            return _replace(record, status="queued", not_before=time.time() + delay, finished_at=None)
        letter = DeadLetter(
            id=record.id, function=record.function, event=event, content_type=record.content_type,
            payload=record.payload, error=record.error, attempts=record.attempts,
            created_at=record.created_at, failed_at=record.finished_at or time.time(),
        )  # fmt: skip
        said = record.error.message if record.error is not None else "failed"

        def why(exc: RecordRefused) -> str:
            return (f"invocation {record.id} of function '{record.function}' failed {plural(record.attempts, 'time')} ({said}); "
                    f"the store refused its dead letter ({exc}): kept without its data, it cannot be replayed; "
                    "send the event again once the cause is fixed")  # fmt: skip

        if await keep(self.store, letter, why) is None:  # refused bare too: the dispatcher tries again, then gives up
            raise RecordRefused(f"the store refused the dead letter {record.id}, even without its data")
        if self.stall_at == "events.after-dead-letter":
            log.warning("test hook SPANFAAS_TEST_STALL: stalled at %s for %s", self.stall_at, record.id)
            await asyncio.Event().wait()
        self.metrics.dead_lettered.labels(event.proxy).inc()
        log.warning("event %s from %s: invocation %s failed %s; moved to the dead-letter store",
                    event.attributes.get("id"), event.attributes.get("source"), record.id, plural(record.attempts, "time"))  # fmt: skip
        return record

    async def dead_letter(self, id: str) -> DeadLetter:
        letter = await asyncio.to_thread(self.store.get_dead_letter, id)
        if letter is None:
            raise DeadLetterNotFound(f"no dead letter '{id}'; `spanfaas events dlq ls` lists them")
        return letter

    async def replay(self, letter: DeadLetter, undeployed: Callable[[], SpanfaasError]) -> InvocationRecord:
        """Queue a dead letter again (a new invocation id); it leaves the dead-letter store.
        ``undeployed``: the error to raise when its function is not deployed (checked as it is queued)."""
        record = InvocationRecord(
            id=self.new_id(), function=letter.function, status="queued", mode="async",
            content_type=letter.content_type, payload=letter.payload, created_at=time.time(), event=letter.event,
        )  # fmt: skip
        try:
            done = await asyncio.to_thread(self.store.replay_dead_letter, letter.id, record)
        except RecordRefused as exc:  # as the event was, maybe: sent again as it is, refused again
            raise ValueRefused(
                f"{exc}; the dead letter is kept: fix what the store refuses (its error says why), then replay it again"
            ) from None
        if done == "undeployed":
            raise undeployed()
        if done == "gone":
            raise DeadLetterNotFound(f"dead letter '{letter.id}' was replayed or removed meanwhile")
        self.wake()
        return record


_IDENTITY = ("id", "source", "type", "subject", "stream")
"""The attributes a bare dead letter keeps: what names its event (a stream's entry: its stream)."""


def bare_letter(letter: DeadLetter, why: str) -> DeadLetter:
    """``letter`` as any store takes it, for one the store refused whole: its id, its event's
    identity (text any store holds, cut short), ``why`` as its error's message, and neither
    data nor function: it is listed, and cannot be replayed (there is nothing to run)."""
    attrs = {k: _plain(v, 512) for k, v in letter.event.attributes.items() if k in _IDENTITY and isinstance(v, str)}
    return DeadLetter(
        id=letter.id, function="", event=Event(attributes=attrs, proxy=letter.event.proxy, trigger=letter.event.trigger),
        content_type=letter.content_type, payload=b"",
        error=ErrorInfo(kind="infra", type=letter.error.type if letter.error else "RecordRefused", message=_plain(why, 4000)),
        attempts=letter.attempts, created_at=letter.created_at, failed_at=letter.failed_at,
    )  # fmt: skip


async def keep(store: Store, letter: DeadLetter, why: Callable[[RecordRefused], str]) -> DeadLetter | None:
    """Store ``letter``; if the store refuses it, ``bare_letter(letter, why(refusal))`` in its
    stead (logged).  The dead letter stored; None when the store refused the bare one too.
    A store that fails (down, locked) raises: the caller keeps what it has, and tries again."""
    try:
        await asyncio.to_thread(store.put_dead_letter, letter)
        return letter
    except RecordRefused as exc:
        bare = bare_letter(letter, why(exc))
    try:
        await asyncio.to_thread(store.put_dead_letter, bare)
    except RecordRefused as exc:
        log.error("dead letter %s: the store refused it, and bare too (%s); %s", letter.id, exc,
                  bare.error.message if bare.error else "")  # fmt: skip
        return None
    log.error("event %s from %s: the store refused its dead letter; kept without its data as dead letter %s "
              "(it cannot be replayed): %s", bare.event.attributes.get("id"), bare.event.attributes.get("source"),
              bare.id, bare.error.message if bare.error else "")  # fmt: skip
    return bare


def _plain(text: str, most: int) -> str:
    """``text`` as every store keeps it (UTF-8 without NUL: PostgreSQL's text), cut to ``most`` characters."""
    text = text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")
    return text if len(text) <= most else text[: most - 1] + "…"
