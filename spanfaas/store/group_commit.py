"""Group commit: concurrent callers share one store transaction per batch.

Each caller hands in a few items and waits for their results; one task
commits whatever has gathered, up to ``max_batch`` items, in a worker
thread, while the next batch gathers.  Used for async invocations
(``gateway.recorder.Enqueuer``) and event admissions (``events.admit``).

A value the store refuses (``RecordRefused``: it always will) fails its
caller alone: the callers of the batch are halved until the refused one is
alone, and the others are committed (a few transactions per refused caller,
not one per caller).  A caller's own items stay together: it gets one answer
(``submit``); or each item is a caller of its own (``submit_each``: a read of a
stream, a batch request), and a refused item fails alone among them too.

Stopped (its task cancelled, the gateway shutting down), it tells each caller
what is true: the callers of the transaction in the store's hands hear how
it ended, when it ends (the thread goes on: it may commit); the others were
never sent, and are told so (``stopped``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from spanfaas.errors import InfraUnavailable
from spanfaas.store.sql import RecordRefused

__all__ = ["GroupCommit"]

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, commit: Callable[[list[T]], list[R]], *, max_batch: int, name: str, stopped: str) -> None:
        """``commit``: one transaction for the items, a result per item (runs in a thread).
        ``stopped``: what callers whose items were not sent hear when the committer is cancelled."""
        self._commit = commit
        self.max_batch = max_batch
        self._name = name
        self._stopped = stopped
        self._pending: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._task: asyncio.Task[None] | None = None
        self._inflight: tuple[list[tuple[Sequence[T], asyncio.Future[list[R]]]], asyncio.Future[list[R]]] | None = None
        """The callers whose items the store has now, and the commit's outcome to come."""

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of ``items``, once the transaction that holds them committed."""
        if not items:
            return []
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self._name)
        return await fut

    async def submit_each(self, items: Sequence[T]) -> list[R | RecordRefused]:
        """``submit`` for each item on its own: its result, or the ``RecordRefused`` of an item
        the store refused (the others are committed).  Any other failure is raised."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[list[R]]] = []
        for item in items:
            futs.append(loop.create_future())
            self._pending.append(([item], futs[-1]))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self._name)
        out: list[R | RecordRefused] = []
        for outcome in await asyncio.gather(*futs, return_exceptions=True):
            if isinstance(outcome, RecordRefused):
                out.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                out.append(outcome[0])
        return out

    async def _drain(self) -> None:
        batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        try:
            while self._pending:
                batch = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                await self._commit_isolating(batch)
        except asyncio.CancelledError:
            # Stopped mid-batch (the gateway shuts down): nobody waits for ever.  Those
            # whose transaction is in the store's hands hear how it ends (it may commit:
            # "send it again" would queue them twice); the rest were never sent.
            stopped = InfraUnavailable(self._stopped)
            sent: set[asyncio.Future[list[R]]] = set()
            if self._inflight is not None:
                callers, work = self._inflight
                self._inflight = None
                sent = {fut for _, fut in callers}
                work.add_done_callback(lambda w: _answer(callers, w, stopped))
            for _, fut in [*batch, *self._pending]:
                if fut not in sent and not fut.done():
                    fut.set_exception(stopped)
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _commit_isolating(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        """Commit ``batch`` and answer its callers; halve it while the store refuses a value."""
        work = asyncio.ensure_future(asyncio.to_thread(self._commit, [x for group, _ in batch for x in group]))
        self._inflight = (batch, work)
        try:
            results = await asyncio.shield(work)  # cancelled (stopped): the commit goes on, see _drain
        except Exception as exc:
            self._inflight = None
            if isinstance(exc, RecordRefused) and len(batch) > 1:
                half = len(batch) // 2
                await self._commit_isolating(batch[:half])
                await self._commit_isolating(batch[half:])
            else:
                _fail(batch, exc)  # the caller decides (HTTP: 5xx; streams: read again)
            return
        self._inflight = None
        _results(batch, results)


def _results(batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], results: list[R]) -> None:
    i = 0
    for group, fut in batch:
        if not fut.done():
            fut.set_result(results[i : i + len(group)])
        i += len(group)


def _answer(
    batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], work: asyncio.Future[list[R]], stopped: InfraUnavailable
) -> None:
    """How a commit left in flight by a stop ended, to its callers."""
    if work.cancelled():  # (the loop itself is closing)
        _fail(batch, InfraUnavailable("the gateway stopped while the store held the items; they may be stored"))
    elif isinstance(exc := work.exception(), RecordRefused) and len(batch) > 1:
        _fail(batch, stopped)  # nothing of it was stored, and there is no time left to find which one
    elif exc is not None:
        _fail(batch, exc)
    else:
        _results(batch, work.result())


def _fail(batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
