"""Group commit of events into the queue: callers wait for their transaction.

Concurrent publishers (HTTP requests, stream readers, schedules) share one
transaction per batch: ``EventStore.admit`` de-duplicates and enqueues, and
each caller learns whether its event was new.  The same idea as the
gateway's ``Enqueuer``, for admissions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from spanfaas.errors import InfraUnavailable
from spanfaas.store import Admission, Store

__all__ = ["Admitter"]


class Admitter:
    def __init__(self, store: Store, *, max_batch: int = 1000) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[Sequence[Admission], asyncio.Future[list[bool]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def admit(self, admissions: Sequence[Admission]) -> list[bool]:
        """True per admission whose invocations are now in the store."""
        if not admissions:
            return []
        fut: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((admissions, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="spanfaas-events-admit")
        return await fut

    async def _drain(self) -> None:
        batch: list[tuple[Sequence[Admission], asyncio.Future[list[bool]]]] = []
        try:
            while self._pending:
                batch = []
                size = 0
                while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
                    item = self._pending.pop(0)
                    batch.append(item)
                    size += len(item[0])
                flat = [a for group, _ in batch for a in group]
                try:
                    results = await asyncio.to_thread(self.store.admit, flat, time.time())
                except Exception as exc:  # the caller decides (HTTP: 5xx; streams: read again)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                i = 0
                for group, fut in batch:
                    if not fut.done():
                        fut.set_result(results[i : i + len(group)])
                    i += len(group)
        except asyncio.CancelledError:
            # Stopped mid-batch (the gateway shuts down): every caller still waiting
            # hears it, rather than waiting for ever; what was sent may be committed,
            # and a redelivery is de-duplicated.
            stopped = InfraUnavailable("the event service stopped before it could say whether the event was queued; send it again")
            for _, fut in [*batch, *self._pending]:
                if not fut.done():
                    fut.set_exception(stopped)
            self._pending.clear()
            raise
        finally:
            self._task = None
