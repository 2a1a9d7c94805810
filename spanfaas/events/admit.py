"""Group commit of events into the queue: callers wait for their transaction.

Concurrent publishers (HTTP requests, stream readers, schedules) share one
transaction per batch: ``EventStore.admit`` de-duplicates and enqueues, and
each caller learns whether its event was new (``store.group_commit``, as
the gateway's ``Enqueuer`` does for async invocations).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from spanfaas.store import Admission, RecordRefused, Refused, Store
from spanfaas.store.group_commit import GroupCommit

__all__ = ["Admitter"]


class Admitter:
    def __init__(self, store: Store, *, max_batch: int = 1000) -> None:
        self.store = store
        self._group: GroupCommit[Admission, bool | Refused] = GroupCommit(
            lambda batch: store.admit(batch, time.time()), max_batch=max_batch, name="spanfaas-events-admit",
            stopped="the event service stopped before it could say whether the event was queued; send it again",
        )  # fmt: skip

    async def admit(self, admissions: Sequence[Admission]) -> list[bool | Refused]:
        """True per admission whose invocations are now in the store (``Refused``: its dead letters)."""
        return await self._group.submit(admissions)

    async def admit_each(self, admissions: Sequence[Admission]) -> list[bool | Refused | RecordRefused]:
        """``admit``, each admission on its own: one the store refused fails alone."""
        return await self._group.submit_each(admissions)
