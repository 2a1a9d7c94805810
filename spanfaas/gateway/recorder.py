"""Store writes off the hot path.

``Recorder`` collects invocation records (finished sync calls, async
outcomes, requeues) and writes them in batches from a background task: one
transaction per batch instead of one per call.  A record waiting for its
batch can still be read (``get``), and ``flush()`` waits until everything
added so far is stored.

``Enqueuer`` is the same idea for the async queue, with one difference: the
caller waits for the commit (group commit), because an accepted invocation
must be in the store before its 202 goes out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from spanfaas.model import InvocationRecord
from spanfaas.store import Store

__all__ = ["Enqueuer", "Recorder"]

log = logging.getLogger("spanfaas.gateway")


class Recorder:
    def __init__(self, store: Store, *, interval: float = 0.05, max_batch: int = 2000) -> None:
        self.store = store
        self.interval = interval
        self.max_batch = max_batch
        self._pending: dict[str, InvocationRecord] = {}
        self._writing: dict[str, InvocationRecord] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.on_error: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spanfaas-recorder")

    def add(self, record: InvocationRecord) -> None:
        self._pending[record.id] = record
        if self._idle.is_set():
            self._idle.clear()
            self._wake.set()

    def get(self, id: str) -> InvocationRecord | None:
        return self._pending.get(id) or self._writing.get(id)

    async def flush(self) -> None:
        if self._task is None or self._task.done():
            await self._write_all()
            return
        await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._write_all()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.interval)  # let a batch gather
            while self._pending:
                await self._write_batch()
            if not self._pending:
                self._idle.set()

    async def _write_all(self) -> None:
        while self._pending:
            await self._write_batch()
        self._idle.set()

    async def _write_batch(self) -> None:
        batch = self._pending
        if len(batch) > self.max_batch:
            keys = list(batch)[: self.max_batch]
            self._writing = {k: batch.pop(k) for k in keys}
        else:
            self._writing, self._pending = batch, {}
        try:
            await asyncio.to_thread(self.store.save_invocations, list(self._writing.values()))
        except Exception as exc:  # the store is down: keep the records, retry
            log.error("could not record %d invocations (will retry): %s", len(self._writing), exc)
            for k, v in self._writing.items():
                self._pending.setdefault(k, v)
            self._writing = {}
            await asyncio.sleep(1.0)
            return
        self._writing = {}


class Enqueuer:
    """Group commit of async invocations: callers wait for their transaction."""

    def __init__(self, store: Store, *, max_batch: int = 500) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[InvocationRecord, asyncio.Future[tuple[InvocationRecord, bool]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def enqueue(self, record: InvocationRecord) -> tuple[InvocationRecord, bool]:
        fut: asyncio.Future[tuple[InvocationRecord, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((record, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="spanfaas-enqueuer")
        return await fut

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                try:
                    results = await asyncio.to_thread(self.store.enqueue_many, [r for r, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._task = None
