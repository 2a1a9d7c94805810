"""Group commit: concurrent callers share one store transaction per batch.

Each caller hands in a few items and waits for their results; one task
commits whatever has gathered, up to ``max_batch`` items, in a worker
thread, while the next batch gathers.  Used for async invocations
(``gateway.recorder.Enqueuer``) and event admissions (``events.admit``).

A value the store refuses (``RecordRefused``: it always will) fails its
caller alone: the callers of the batch are halved until the refused one is
alone, and the others are committed (a few transactions per refused caller,
not one per caller).  A caller's own items stay together: it gets one answer.
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
        ``stopped``: what the callers of a batch hear when the committer is cancelled."""
        self._commit = commit
        self.max_batch = max_batch
        self._name = name
        self._stopped = stopped
        self._pending: list[tuple[Sequence[T], asyncio.Future[list[R]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of ``items``, once the transaction that holds them committed."""
        if not items:
            return []
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._pending.append((items, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self._name)
        return await fut

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
            # Stopped mid-batch (the gateway shuts down): every caller still waiting
            # hears it, rather than waiting for ever; what was sent may be committed,
            # and a retry is de-duplicated (idempotency key, event id).
            stopped = InfraUnavailable(self._stopped)
            for _, fut in [*batch, *self._pending]:
                if not fut.done():
                    fut.set_exception(stopped)
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _commit_isolating(self, batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]]) -> None:
        """Commit ``batch`` and answer its callers; halve it while the store refuses a value."""
        try:
            results = await asyncio.to_thread(self._commit, [x for group, _ in batch for x in group])
        except RecordRefused as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                await self._commit_isolating(batch[:half])
                await self._commit_isolating(batch[half:])
                return
            _fail(batch, exc)
            return
        except Exception as exc:  # the caller decides (HTTP: 5xx; streams: read again)
            _fail(batch, exc)
            return
        i = 0
        for group, fut in batch:
            if not fut.done():
                fut.set_result(results[i : i + len(group)])
            i += len(group)


def _fail(batch: list[tuple[Sequence[T], asyncio.Future[list[R]]]], exc: BaseException) -> None:
    for _, fut in batch:
        if not fut.done():
            fut.set_exception(exc)
