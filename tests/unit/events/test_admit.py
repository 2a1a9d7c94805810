"""The admitter's group commit: a caller always hears how its batch ended."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from spanfaas.errors import InfraUnavailable
from spanfaas.events.admit import Admitter
from spanfaas.store import Admission

pytestmark = pytest.mark.asyncio


class _SlowStore:
    """``admit`` blocks until released, as a store under a long write."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def admit(self, batch: Sequence[Admission], now: float) -> list[bool]:
        self.entered.set()
        self.release.wait(10)
        return [True] * len(batch)


async def test_callers_waiting_on_a_stopped_admitter_are_told_so() -> None:
    store = _SlowStore()
    admitter = Admitter(store)  # type: ignore[arg-type]
    first = asyncio.create_task(admitter.admit([Admission(source="/s", id="1", records=[])]))
    await asyncio.to_thread(store.entered.wait, 5)
    second = asyncio.create_task(admitter.admit([Admission(source="/s", id="2", records=[])]))  # queued behind
    await asyncio.sleep(0)
    task: Any = admitter._task
    task.cancel()  # the gateway stops
    store.release.set()
    async with asyncio.timeout(5):
        for caller in (first, second):
            with pytest.raises(InfraUnavailable, match="send it again"):
                await caller
