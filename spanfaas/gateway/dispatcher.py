"""The async dispatcher: runs queued invocations from the store.

Up to ``settings.async_workers`` invocations run at once.  Each is claimed
with a lease that a heartbeat extends while it runs (through a stop's grace
too), and after it while its outcome waits for the recorder; a gateway that dies leaves leases that
expire, and the records are claimed again: at-least-once (an outcome is
shown only once the recorder has stored it, so a re-run never changes an
outcome a client has read).  On start-up an exclusive store (SQLite) hands
back every 'running' record at once.  Platform failures (``InfraError``) are
retried ``async_retries`` times with exponential backoff; a function's own
failure is recorded, not retried; a function whose queue is full (429), or a store
that cannot be read before the run, makes the invocation wait in the queue, neither a
run nor a failure.  On a store other gateways share, a record
runs once every deploy committed before it was claimed is in force here
(``Coherence.barrier``): an invocation accepted after a deploy returned runs
that version, whichever gateway claims it.

Two budgets, kept apart: ``attempts`` counts every start, ``reruns`` the
starts made again because an earlier one left no stored outcome (its gateway
died, or could not store an event run's dead letter).  Retries are taken
from ``attempts - reruns`` (the runs that ended with a failure), so a crash
does not use up the retries the operator configured (nor, for an event,
``events.retries``); re-runs have their own limit, ``CRASH_RERUNS``.

A claim is not a start: a claimed invocation may wait (in its function's own
queue, the local pool's ``scaling.queue``; for a deploy, ``Coherence``; for the
store) before it runs.  The infrastructure says when the run starts
(``InvokeContext.on_start``: the call is handed to an instance, written to Ray's
bridge, or leaves for a site once connected), and the dispatcher marks it in the store (``Store.mark_started``),
in one small write per ``mark_every`` for all the runs that started meanwhile,
off the call's path.  Each claim has an owner of its own (the gateway's, and the
claim's number), which the mark names: a mark still on its way as its record is given
back and claimed again does not land on the new claim.  A gateway that dies leaves its claims to be taken back
(an expired lease; at start-up, ``requeue_running``): a claim marked started
is a re-run (``reruns`` + 1); one that is not only waited, and was no run
(``attempts`` - 1, ``reclaims`` + 1), however many crashes it waits through,
up to ``CRASH_RECLAIMS``.  That larger bound is there for a run that started and
took the gateway down before its mark was stored (within ``mark_every``, or while
the store was down): counted as a claim given back, it still ends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Protocol

import msgspec

from spanfaas.config import Settings
from spanfaas.errors import FunctionNotFound, InfraError, SpanfaasError, TooManyRequests, plural
from spanfaas.infra.base import Infrastructure
from spanfaas.model import ErrorInfo, InvocationRecord, InvokeContext
from spanfaas.store import Store, StoreUnavailable
from spanfaas.gateway.coherence import Coherence
from spanfaas.gateway.metrics import Metrics
from spanfaas.gateway.recorder import Recorder
from spanfaas.gateway.registry import Registry

__all__ = ["Dispatcher", "EventOutcomes"]

log = logging.getLogger("spanfaas.gateway")

BUSY_MIN = 0.05
"""Seconds at least (jittered ×0.5–1.5, like ``async_backoff`` above it) before an async
invocation refused by its function's full queue, or whose function the store could not
read, is claimed again."""

CRASH_RERUNS = 3
"""Times an async invocation is started again because a run left no stored
outcome (the gateway died during it, or could not store the outcome), on top
of its retries: at least once survives a crash, and an invocation that takes
the gateway down with it every time does not do so for ever."""

CRASH_RECLAIMS = 20
"""Times an async invocation is claimed again after a gateway died before its run was
marked started (it waited in its function's queue, or for a deploy): no runs, but a run
that took the gateway down at once is counted so too (its mark was not stored yet), so
this ends it as ``CRASH_RERUNS`` does, after more crashes: waiting work survives 20
crashes of its gateway in a row."""
_replace = msgspec.structs.replace


class EventOutcomes(Protocol):
    """Decides what becomes of a finished event invocation (``spanfaas.events.delivery``);
    may raise when the store fails (a dead letter not written): the dispatcher tries again."""

    async def settle(self, record: InvocationRecord, *, final: bool = False) -> InvocationRecord: ...


class Dispatcher:
    lease = 30.0
    """Seconds a claim is valid without a heartbeat (``settings.async_lease``)."""
    poll = 0.25
    """Seconds between looks at the queue when nobody wakes us."""
    settle_tries = 5
    """Tries to settle a finished event run (its retry or dead letter) while the store
    fails, before the run goes back to the queue as one that left no outcome."""
    settle_backoff = 0.1
    """Seconds before the second try; doubles per try (1.5 s over five tries)."""
    mark_every = 0.05
    """Seconds the starts of runs gather before one write marks them in the store."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        infra: Infrastructure,
        registry: Registry,
        recorder: Recorder,
        metrics: Metrics,
        *,
        coherence: Coherence | None = None,
    ) -> None:
        self.settings = settings
        self.lease = settings.async_lease
        self.store = store
        self.infra = infra
        self.registry = registry
        self.recorder = recorder
        self.metrics = metrics
        self.coherence = coherence
        """Other gateways' deploys committed before a record was claimed are in force before it runs."""
        self.owner = "gw-" + secrets.token_hex(6)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.events: EventOutcomes | None = None
        """Set by the event service: event invocations are retried and dead-lettered by it."""
        self._started: dict[str, int] = {}
        """Of ``running``, the records whose run started: how many starts (a failover's second
        start is one more), less those refused before they ran (``InvokeContext.on_refused``)."""
        self._claims: dict[str, str] = {}
        """Of ``running``, the owner each record's claim was made with: one per claim, so that a
        mark on its way as the record is given back and claimed again is not put on the new claim."""
        self._unmarked: dict[str, tuple[str, bool]] = {}
        """Records whose run started (True), or whose only start was refused (False), not marked
        so in the store yet: the owner of their claim, and which."""
        self._claimed = 0
        self._mark = asyncio.Event()

    async def start(self) -> None:
        if self.store.exclusive:
            n = await asyncio.to_thread(self.store.requeue_running)
            if n:
                log.info("took back %d async invocations a previous gateway left running", n)
        self._tasks = [
            asyncio.create_task(self._feed(), name="spanfaas-dispatcher"),
            asyncio.create_task(self._heartbeat(), name="spanfaas-leases"),
            asyncio.create_task(self._marks(), name="spanfaas-run-marks"),
        ]

    def wake(self) -> None:
        self._wake.set()

    def hold(self) -> None:
        """Claim nothing more: the gateway is stopping (a signal came; ``stop`` follows once its
        sync requests are done).  What runs goes on.  Only a flag (this may run in a signal
        handler): the feed sees it at its next look, within ``poll``, or as a slot frees up."""
        self._stopping = True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop claiming; give running invocations ``grace`` seconds, then requeue the rest."""
        self._stopping = True
        if self.running:
            log.info("stopping: %s given %.0f s to end", plural(len(self.running), "async invocation"), grace)
        # The heartbeat and the marks go on until the last run has ended or been given back: a
        # grace longer than the lease must not let another gateway claim a run still going here,
        # and a run that starts in the grace (a claim that waited behind another), or just
        # before it, is a re-run if the gateway dies now.
        feed, keep = self._tasks[:1], self._tasks[1:]
        for task in feed:
            task.cancel()
        await asyncio.gather(*feed, return_exceptions=True)
        if self.running:
            _, pending = await asyncio.wait(list(self.running.values()), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in keep:
            task.cancel()
        await asyncio.gather(*keep, return_exceptions=True)
        if self._unmarked and (exc := await self._write_marks()) is not None:  # (runs whose outcome may wait for the recorder)
            log.error("could not mark %s started as the gateway stopped: %s", plural(len(self._unmarked), "async run"), exc)

    async def _feed(self) -> None:
        workers = self.settings.async_workers
        while not self._stopping:
            self._wake.clear()  # before looking: a wake-up from now on is not lost
            free = workers - len(self.running)
            got = 0
            if free > 0:
                self._claimed += 1
                owner = f"{self.owner}.{self._claimed}"
                try:
                    batch = await asyncio.to_thread(self.store.claim, time.time(), self.lease, free, owner)
                except Exception as exc:  # the store is down: try again later
                    log.error("could not claim async invocations: %s", exc)
                    batch = []
                    await asyncio.sleep(1.0)
                claimed = time.monotonic()  # every record was accepted before: so was the version it must run on
                got = len(batch)
                for record in batch:
                    if record.id in self.running or self.recorder.get(record.id) is not None:
                        # Its lease ran out while we still ran it, or while the store refused its
                        # outcome (the heartbeat could not extend it in time): that run, or that
                        # outcome stored when the store takes it, settles it; the claim is ours now
                        # (unmarked, as every claim: marked again if that run started).
                        if record.id in self.running:
                            self._claims[record.id] = owner
                        if record.id in self._started:
                            self._run_started(record.id, again=True)
                        continue
                    # A new claim (of a record this gateway gave back: a 429, a retry): a start
                    # of the earlier one not written yet is none of this one's (nor is one on its
                    # way to the store: it names the earlier claim's owner).
                    self._unmarked.pop(record.id, None)
                    self._claims[record.id] = owner
                    task = asyncio.create_task(self._run(record, claimed), name=f"spanfaas-async-{record.id}")
                    self.running[record.id] = task
                    task.add_done_callback(self._done)
                if got == free:
                    continue  # there may be more: look again once a slot is free
            if free <= 0:
                await self._wake.wait()  # a slot frees up
            else:
                try:
                    async with asyncio.timeout(self.poll):  # (wait_for drops a cancel on 3.11)
                        await self._wake.wait()
                except TimeoutError:
                    pass

    def _done(self, task: asyncio.Task[None]) -> None:
        name = task.get_name().removeprefix("spanfaas-async-")
        self.running.pop(name, None)
        self._started.pop(name, None)
        self._claims.pop(name, None)
        self._wake.set()

    def _run_started(self, id: str, *, again: bool = False) -> None:
        """``InvokeContext.on_start`` of a claimed record: its run started (no store I/O here)."""
        if id not in self.running:
            return
        starts = self._started.get(id, 0)
        if not again:
            self._started[id] = starts + 1
            if starts:
                return  # a failover's second start: marked once
        elif not starts:
            return
        self._unmarked[id] = (self._claims[id], True)
        self._mark.set()

    def _run_refused(self, id: str) -> None:
        """``InvokeContext.on_refused`` of a claimed record: a start it was told of ran nothing
        (a site answered 429).  With no other start left, the claim is no run: a crash now
        gives it back as one that only waited (``reclaims``), not a re-run."""
        starts = self._started.get(id, 0)
        if id not in self.running or not starts:
            return
        if starts > 1:
            self._started[id] = starts - 1
            return
        del self._started[id]
        self._unmarked[id] = (self._claims[id], False)
        self._mark.set()

    async def _marks(self) -> None:
        """Mark the runs that started in the store: one write per ``mark_every`` at most, for
        all the runs that started meanwhile.  While the store fails, the marks wait (a crash
        then leaves those claims counted as given back: ``CRASH_RECLAIMS``)."""
        while True:
            await self._mark.wait()
            await asyncio.sleep(self.mark_every)
            self._mark.clear()
            if (exc := await self._write_marks()) is not None:
                log.error("could not mark %s started (will retry): %s", plural(len(self._unmarked), "async run"), exc)
                self._mark.set()
                await asyncio.sleep(1.0)

    async def _write_marks(self) -> Exception | None:
        """Write the marks waiting; the store's error if it failed (they wait again)."""
        marks, self._unmarked = self._unmarked, {}
        try:
            await asyncio.to_thread(self.store.mark_started, {id: owner for id, (owner, run) in marks.items() if run})
            if refused := {id: owner for id, (owner, run) in marks.items() if not run}:
                await asyncio.to_thread(self.store.mark_started, refused, started=False)
        except BaseException as exc:
            # Cancelled (the stop), the write may or may not have gone through: written again then.
            for id, mark in marks.items():  # (a mark made since, of this claim or a later one, comes first)
                self._unmarked.setdefault(id, mark)
            if not isinstance(exc, Exception):
                raise
            return exc
        return None

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            # Runs, and finished runs whose outcome waits for the recorder (longer than a lease
            # while the store refuses it): their records stay ours, not claimed and run again.
            ids = [*self.running, *self.recorder.unsaved(mode="async")]
            if ids:
                try:
                    await asyncio.to_thread(self.store.extend_leases, ids, time.time() + self.lease)
                except Exception as exc:
                    log.error("could not extend leases: %s", exc)

    async def _run(self, record: InvocationRecord, claimed: float) -> None:
        """Run a record claimed at ``claimed`` (monotonic): on the function's version as of then, at least."""
        started = time.time()
        if record.reruns > CRASH_RERUNS:
            error = ErrorInfo(
                kind="infra", type="InfraError",
                message=f"not run again: {record.reruns} runs ended without a stored outcome: the gateway stopped "
                        f"during them (a function that takes the gateway down?) or could not store their outcome; "
                        f"see the gateway's log",
            )  # fmt: skip
            await self._give_up(record, error, started)
            return
        if record.reclaims > CRASH_RECLAIMS:
            error = ErrorInfo(
                kind="infra", type="InfraError",
                message=f"not run: {record.reclaims} claims ended before their run was marked started: the gateway "
                        f"stopped while the invocation waited to run, or as its run started (a function that takes "
                        f"the gateway down?); see the gateway's log",
            )  # fmt: skip
            await self._give_up(_replace(record, attempts=record.attempts - 1), error, started)  # this claim: no run either
            return
        try:
            if self.coherence is not None:
                await self.coherence.barrier(record.function, claimed)
            try:
                fn = await self.registry.require(record.function)
            except StoreUnavailable as exc:
                # The store could not say what to run (a function deployed through another
                # gateway is read from it): nothing ran, nothing failed.  Not a retry.
                self._wait(record, f"the store could not be read before it ran ({exc.message})")
                return
            event = record.event.attributes if record.event is not None else None
            ctx = InvokeContext(
                invocation_id=record.id, content_type=record.content_type, event=event,
                on_start=lambda: self._run_started(record.id), on_refused=lambda: self._run_refused(record.id),
            )  # fmt: skip
            t0 = time.perf_counter()
            in_flight = self.metrics.in_flight
            in_flight[record.function] = in_flight.get(record.function, 0) + 1
            try:
                result = await self.infra.invoke(fn.spec, record.payload, ctx)
            finally:
                in_flight[record.function] -= 1
        except asyncio.CancelledError:
            if self._stopping:  # shutting down: back to the queue for the next gateway, this start not counted
                self.recorder.add(_replace(record, status="queued", not_before=0.0, started_at=None, attempts=record.attempts - 1))
            raise
        except TooManyRequests:
            # The function's own queue is full (scaling.max + scaling.queue): nothing ran,
            # nothing failed.  Back to the queue, not counted, to run once there is room.
            self._wait(record, f"function {record.function!r} is busy", logging.DEBUG)
            return
        except Exception as exc:
            if not isinstance(exc, SpanfaasError):
                # A bug or an unforeseen failure below us (a lost pipe …): a platform failure,
                # retried within the limit; not a task that dies and leaves the record 'running'
                # until its lease runs out, to be run again then without limit.
                log.error("async invocation %s: unexpected error from the platform", record.id, exc_info=exc)
                exc = InfraError(f"unexpected {type(exc).__name__}: {exc}")
            if record.event is not None and self.events is not None:
                error = ErrorInfo(kind="infra", type=type(exc).__name__, message=exc.message)
                failed = _replace(record, status="failed", error=error, started_at=started, finished_at=time.time())
                await self._settle(record, failed, kind="not_found" if isinstance(exc, FunctionNotFound) else "infra")
                return
            self._platform_failed(record, exc, started)
            return
        settles = record.event is not None and self.events is not None  # it may be retried: counted once settled
        self.metrics.observe(record.function, result, time.perf_counter() - t0, count=not settles)
        done = (
            _replace(
                record,
                status="succeeded" if result.error is None else "failed",
                payload=record.payload,
                output=result.output,
                output_type=result.content_type,
                error=result.error,
                logs=result.logs,
                infra=result.infra,
                started_at=started,
                finished_at=time.time(),
                duration_ms=result.duration_ms,
                cold=result.cold,
                tried=result.tried,
            )
        )
        if settles:
            await self._settle(record, done)
        else:
            self.recorder.add(done)

    async def _give_up(self, record: InvocationRecord, error: ErrorInfo, started: float) -> None:
        """Fail ``record`` without running it: too many claims of it ended with no outcome."""
        log.error("async invocation %s: %s", record.id, error.message)
        failed = _replace(record, status="failed", error=error, started_at=started, finished_at=time.time())
        if record.event is not None and self.events is not None:
            await self._settle(record, failed, final=True)  # its event to the dead-letter store, for a replay
        else:
            self.metrics.infra_failed(record.function)
            self.recorder.add(failed)

    def _wait(self, record: InvocationRecord, why: str, level: int = logging.WARNING) -> None:
        """Back to the queue before it ran, after a jittered pause: neither a run nor a retry."""
        delay = max(self.settings.async_backoff, BUSY_MIN) * (0.5 + random.random())
        log.log(level, "async invocation %s waits: %s; again in %.2fs", record.id, why, delay)
        self.recorder.add(_replace(record, status="queued", not_before=time.time() + delay, started_at=None, attempts=record.attempts - 1))

    async def _settle(
        self, record: InvocationRecord, done: InvocationRecord, *, final: bool = False, kind: str | None = None
    ) -> None:
        """Record a finished event run as ``events.settle`` decides (retry or dead letter), and count
        it so: a run that failed and is retried is a retry, not a failed invocation.  ``kind``: of
        its failure, for the metrics (default: its error's).

        While the store fails (the dead letter cannot be written), try again with backoff,
        the record's lease kept by the heartbeat; then, or when the gateway stops meanwhile,
        give the run back to the queue as one that left no outcome (a re-run, limited by
        ``CRASH_RERUNS``) -- never a task that dies and leaves the record 'running' until
        its lease runs out.
        """
        assert self.events is not None
        failure = kind or (done.error.kind if done.error is not None else "infra")
        delay, reason = self.settle_backoff, ""
        try:
            for attempt in range(1, self.settle_tries + 1):
                try:
                    settled = await self.events.settle(done, final=final)
                    self.recorder.add(settled)
                    if settled.status == "queued":
                        self.metrics.retried(record.function, failure)
                    else:
                        self.metrics.finished(record.function, None if settled.status == "succeeded" else failure)
                    return
                except Exception as exc:  # noqa: BLE001 - the store failed: try again, then give the run back
                    reason = f"{type(exc).__name__}: {exc}"
                if attempt < self.settle_tries:
                    log.warning("async invocation %s: could not settle its outcome (try %d of %d), trying again in %.2fs: %s",
                                record.id, attempt, self.settle_tries, delay, reason)  # fmt: skip
                    await asyncio.sleep(delay)
                    delay *= 2
        except asyncio.CancelledError:
            self._rerun(record, "the gateway stopped before the outcome was stored")
            raise
        if final:  # it must not run again: failed, though its event is not kept for a replay
            log.error("async invocation %s: could not store the dead letter of its event in %s, the event is lost: %s",
                      record.id, plural(self.settle_tries, "try", "tries"), reason)  # fmt: skip
            assert done.error is not None
            error = msgspec.structs.replace(done.error, message=f"{done.error.message}; its event could not be kept as a dead letter ({reason})")
            self.recorder.add(_replace(done, error=error))
            self.metrics.finished(record.function, failure)
            return
        log.error("async invocation %s: could not settle its outcome in %s, it runs again: %s",
                  record.id, plural(self.settle_tries, "try", "tries"), reason)  # fmt: skip
        self._rerun(record, f"the gateway could not store the outcome ({reason})")

    def _rerun(self, record: InvocationRecord, why: str) -> None:
        """Back to the queue: the run left no stored outcome, so the next one is a re-run, not a retry."""
        reruns = record.reruns + 1
        error = ErrorInfo(kind="infra", type="InfraError", message=f"{why}; it runs again")
        delay = self.settings.async_backoff * (2 ** (reruns - 1))
        self.recorder.add(_replace(record, status="queued", reruns=reruns, error=error, not_before=time.time() + delay))

    def _platform_failed(self, record: InvocationRecord, exc: SpanfaasError, started: float) -> None:
        error = ErrorInfo(kind="infra", type=type(exc).__name__, message=exc.message)
        # removed before it ran: failed, not the platform's failure (its type says so to the client)
        kind = "not_found" if isinstance(exc, FunctionNotFound) else "infra"
        retries = self.settings.async_retries
        failures = record.attempts - record.reruns  # a re-run after a crash is not a retry
        if isinstance(exc, InfraError) and failures <= retries:
            delay = self.settings.async_backoff * (2 ** (failures - 1))
            log.warning("async invocation %s failed on the platform (attempt %d of %d), retrying in %.2fs: %s",
                        record.id, failures, retries + 1, delay, exc)  # fmt: skip
            self.metrics.retried(record.function, kind)  # an attempt that failed, not (yet) a failed invocation
            self.recorder.add(_replace(record, status="queued", error=error, not_before=time.time() + delay))
        else:
            self.metrics.infra_failed(record.function, kind)
            self.recorder.add(
                _replace(record, status="failed", error=error, started_at=started, finished_at=time.time())
            )
