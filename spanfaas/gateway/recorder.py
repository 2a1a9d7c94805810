"""Store writes off the hot path.

``Recorder`` collects invocation records (finished sync calls, async
outcomes, requeues) and writes them in batches from a background task: one
transaction per ``interval`` (50 ms) at most, however many calls arrive,
from one dedicated thread.  A record waiting for its
batch can still be read (``get``; the API does so for sync records only: an
async outcome is not shown before it is stored), and ``flush()`` waits until
everything added so far is stored.

A store that fails (down, locked, restarting) keeps the records waiting: they
are written again until it takes them.  A record the store refuses for a value
in it (``RecordRefused``: it always will) must not hold back the others: the
records of its batch are halved until it is alone, the others stored, and it
is stored as a failed outcome that says why (a caller polling it gets an
answer), logged once.  A store that refuses even that takes nothing of the
invocation: it is the store that fails, and the record waits for it.

Sync calls that are running are not written at all (the store gets their outcome),
but they are shown: ``begin`` holds a call from when it is sent to the
infrastructure until ``end``, and ``get`` and ``running_records`` see it as a
'running' record.  (A gateway shows its own: other gateways sharing the store do not.)

``Enqueuer`` is the same idea for the async queue, with one difference: the
caller waits for the commit (group commit), because an accepted invocation
must be in the store before its 202 goes out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import msgspec
from prometheus_client import CollectorRegistry, Counter

from spanfaas.errors import plural
from spanfaas.model import ErrorInfo, InvocationRecord
from spanfaas.store import RecordRefused, Store
from spanfaas.store.group_commit import GroupCommit

__all__ = ["Enqueuer", "Recorder"]

log = logging.getLogger("spanfaas.gateway")


class Recorder:
    """Invocation records, written in the background: at most one transaction per ``interval``.

    Under a steady load each round writes what gathered during the last
    ``interval`` seconds (one transaction, ``max_batch`` rows per statement
    chunk), then waits again: the write rate, fsyncs included, does not grow
    with the request rate.  All writes go through one thread, so one SQLite
    connection keeps its page cache warm.
    """

    def __init__(
        self, store: Store, *, interval: float = 0.05, max_batch: int = 2000, registry: CollectorRegistry | None = None
    ) -> None:
        self.store = store
        self.interval = interval
        self.max_batch = max_batch
        self._pending: dict[str, InvocationRecord] = {}
        self._writing: dict[str, InvocationRecord] = {}
        self._running: dict[str, tuple[str, str, float, str]] = {}
        """Sync calls running now, by id: (function, content type, started, origin)."""
        self._wake = asyncio.Event()
        self._flushers: list[asyncio.Future[None]] = []
        self._tries: list[asyncio.Future[bool]] = []
        """Callers of ``try_flush``: told after the next write round whether it stored."""
        self.failing = False
        """The last write round failed: the store cannot take records now (they wait)."""
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._inflight_records: list[InvocationRecord] = []
        self._executor: ThreadPoolExecutor | None = None
        self.on_error: Callable[[BaseException], None] | None = None
        self.refused = Counter(
            "spanfaas_records_refused", "Invocation records the store refused, stored as an infra error instead",
            ["function"], registry=registry,
        )  # fmt: skip

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="spanfaas-recorder")
        self._task = asyncio.create_task(self._run(), name="spanfaas-recorder")

    def add(self, record: InvocationRecord) -> None:
        self._pending[record.id] = record
        if not self._wake.is_set():
            self._wake.set()

    def begin(self, id: str, function: str, content_type: str, started: float, origin: str = "") -> None:
        """A sync call is sent to its infrastructure: shown as running until ``end``."""
        self._running[id] = (function, content_type, started, origin)

    def end(self, id: str) -> None:
        """The sync call is over (its outcome ``add``-ed, or nothing to record)."""
        self._running.pop(id, None)

    def get(self, id: str) -> InvocationRecord | None:
        record = self._pending.get(id) or self._writing.get(id)
        if record is None and id in self._running:
            return _running(id, self._running[id])
        return record

    def running_records(self) -> list[InvocationRecord]:
        """The sync calls running now, as records."""
        return [_running(id, call) for id, call in list(self._running.items())]

    def unsaved_records(self, *, mode: Literal["sync", "async"]) -> list[InvocationRecord]:
        """The records of ``mode`` added and not stored yet (the latest of each)."""
        return [r for r in {**self._writing, **self._pending}.values() if r.mode == mode]

    def unsaved(self, *, mode: Literal["sync", "async"]) -> list[str]:
        """Ids of the records of ``mode`` added and not stored yet."""
        return list({id: None for batch in (self._writing, self._pending) for id, r in batch.items() if r.mode == mode})

    async def flush(self) -> None:
        """Wait until every record added so far is stored."""
        if self._task is None or self._task.done():
            await self._write_all()
            return
        if not self._pending and not self._writing:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushers.append(fut)
        self._wake.set()
        await fut

    async def try_flush(self) -> bool:
        """Store every record added so far, as ``flush``; but False, not a wait, once the store
        fails to take them (at once if the last round failed): the records wait, the caller does not."""
        if not self._pending and not self._writing:
            return True
        if self.failing or self._task is None or self._task.done():
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._tries.append(fut)
        self._wake.set()
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._inflight is not None:  # a write the cancellation left running in its thread
            try:
                await self._inflight
            except Exception as exc:  # noqa: BLE001 - the store failed: _write_all retries these
                log.error("recording invocations failed at shutdown: %s", exc)
                for r in self._inflight_records:
                    self._pending.setdefault(r.id, r)
            self._inflight = None
        await self._write_all()
        for fut in self._flushers:
            if not fut.done():
                fut.set_result(None)
        self._flushers = []
        for tried in self._tries:
            if not tried.done():
                tried.set_result(not self._pending)
        self._tries = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._flushers and not self._tries:
                await asyncio.sleep(self.interval)  # let a batch gather
            self._wake.clear()  # from now on, an add wakes the next round
            flushers, self._flushers = self._flushers, []
            tries, self._tries = self._tries, []
            stored = await self._write_round()
            self.failing = not stored
            for tried in tries:
                if not tried.done():
                    tried.set_result(stored)
            if stored:
                for fut in flushers:
                    if not fut.done():
                        fut.set_result(None)
            else:  # the store is down: keep the records and the flushers, retry
                self._flushers = flushers + self._flushers
                self._wake.set()
                await asyncio.sleep(1.0)

    async def _write_all(self, attempts: int = 3) -> None:
        """Everything pending, now (close, or flush without the task); a few tries if the store fails."""
        while self._pending and attempts > 0:
            if not await self._write_round():
                attempts -= 1
                if attempts:
                    await asyncio.sleep(1.0)

    async def _write_round(self) -> bool:
        """Store what is pending now (in ``max_batch`` chunks); False if the store failed."""
        batch, self._pending = self._pending, {}
        self._writing = batch
        records = list(batch.values())
        stored: set[str] = set()
        try:
            unstored: RecordRefused | None = None
            for i in range(0, len(records), self.max_batch):
                unstored = await self._save_isolating(records[i : i + self.max_batch], stored) or unstored
            if unstored is not None:
                raise unstored  # the others are stored: these wait for the store, as on any failure
        except asyncio.CancelledError:
            # close(): the write in flight still ends (close waits for it, and keeps its
            # records if it fails); the rest goes back
            inflight = {r.id for r in self._inflight_records} if self._inflight is not None else set()
            for k, v in batch.items():
                if k not in stored and k not in inflight:
                    self._pending.setdefault(k, v)
            raise
        except Exception as exc:  # noqa: BLE001 - the store is down: keep the records, retry
            log.error("could not record %s (will retry): %s", plural(len(batch) - len(stored), "invocation"), exc)
            for k, v in batch.items():
                if k not in stored:
                    self._pending.setdefault(k, v)  # a newer version added meanwhile wins
            if self.on_error is not None:
                self.on_error(exc)
            return False
        finally:
            self._writing = {}
        return True

    async def _save_isolating(self, records: list[InvocationRecord], stored: set[str]) -> RecordRefused | None:
        """Store ``records``; when the store refuses one, halve them until it is alone (a few
        transactions per refused record, not one per record of the batch).  Returns why
        the store took nothing of some record, if it did not."""
        try:
            await self._save(records)
        except RecordRefused as exc:
            if len(records) > 1:
                half = len(records) // 2
                first = await self._save_isolating(records[:half], stored)
                return await self._save_isolating(records[half:], stored) or first
            if not await self._save_refused(records[0], exc):
                return exc
        stored.update(r.id for r in records)  # stored, or what could be of a refused one
        return None

    async def _save_refused(self, record: InvocationRecord, exc: RecordRefused) -> bool:
        """Store what can be stored of a record the store refused: its outcome as an infra error.

        False when the store refuses that too: then it takes nothing of this invocation,
        not even values it took before, so it is the store that fails (a trigger that
        refuses writes looks like a constraint), and the record waits as on any failure."""
        for failed in _refused_outcomes(record, exc):
            try:
                await self._save([failed])
            except RecordRefused:
                continue
            log.error("invocation %s of '%s': %s; stored it as failed instead", record.id, record.function, exc)
            self.refused.labels(record.function).inc()
            return True
        return False

    async def _save(self, records: list[InvocationRecord]) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None]
        if self._executor is None:
            fut = asyncio.ensure_future(asyncio.to_thread(self.store.save_invocations, records))
        else:
            fut = loop.run_in_executor(self._executor, self.store.save_invocations, records)
        self._inflight, self._inflight_records = fut, records
        try:
            await asyncio.shield(fut)  # cancelled (close): the write still ends, and close() waits for it
        finally:
            if fut.done():
                self._inflight = None


def _running(id: str, call: tuple[str, str, float, str]) -> InvocationRecord:
    function, content_type, started, origin = call
    return InvocationRecord(
        id=id, function=function, status="running", content_type=content_type, attempts=1,
        created_at=started, started_at=started, origin=origin,
    )  # fmt: skip


def _refused_outcomes(record: InvocationRecord, exc: RecordRefused) -> list[InvocationRecord]:
    """What to store instead of a record the store refused, best first: the invocation failed,
    saying why.  Its output, logs and error are left out (one of them is likely what was
    refused); the first keeps what it was called with (its payload, key and event, which the
    store took when it was queued), the second only its id, function and times."""
    error = ErrorInfo(
        kind="infra", type="RecordRefused",
        message=f"the outcome of this invocation could not be stored ({exc}); its result and logs are lost",
    )  # fmt: skip
    bare = InvocationRecord(
        id=record.id, function=record.function, status="failed", mode=record.mode, error=error,
        attempts=record.attempts, reruns=record.reruns, reclaims=record.reclaims, infra=record.infra, created_at=record.created_at,
        started_at=record.started_at, finished_at=record.finished_at or time.time(), not_before=record.not_before,
        duration_ms=record.duration_ms, cold=record.cold, origin=record.origin,
    )  # fmt: skip
    called = msgspec.structs.replace(
        bare, content_type=record.content_type, payload=record.payload, idempotency_key=record.idempotency_key,
        event=record.event,
    )  # fmt: skip
    return [called, bare]


class Enqueuer:
    """Group commit of async invocations: callers wait for their transaction."""

    def __init__(self, store: Store, *, max_batch: int = 500) -> None:
        self.store = store
        self._group: GroupCommit[InvocationRecord, tuple[InvocationRecord, bool]] = GroupCommit(
            store.enqueue_many, max_batch=max_batch, name="spanfaas-enqueuer",
            stopped="the gateway stopped before the invocation was queued; send it again",
        )  # fmt: skip

    async def enqueue(self, record: InvocationRecord) -> tuple[InvocationRecord, bool]:
        """The record stored (the first one, for a repeated idempotency key) and whether it is new."""
        return (await self._group.submit([record]))[0]
