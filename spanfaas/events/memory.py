"""An in-process ``EventSource`` for tests of its callers: ``emit`` events, ``run`` publishes them.

The real sources (Redis, schedules) are tested for real; this one lets a
test drive the service or the router without a server.
"""

from __future__ import annotations

import asyncio

from spanfaas.events.base import CloudEvent, Published, Sink

__all__ = ["MemorySource"]


class MemorySource:
    kind = "memory"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[list[CloudEvent], asyncio.Future[list[Published]]]] = asyncio.Queue()

    async def emit(self, *events: CloudEvent) -> list[Published]:
        """Hand events to the running source; returns what ``publish`` made of them."""
        fut: asyncio.Future[list[Published]] = asyncio.get_running_loop().create_future()
        await self._queue.put((list(events), fut))
        return await fut

    async def run(self, sink: Sink) -> None:
        while True:
            events, fut = await self._queue.get()
            try:
                fut.set_result(await sink.publish(self.kind, events))
            except Exception as exc:
                fut.set_exception(exc)
