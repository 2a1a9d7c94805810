"""The Recorder batches by time: under a steady load, one write per interval, not one per wake-up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from spanfaas.gateway.recorder import Recorder
from spanfaas.model import InvocationRecord


class SlowStore:
    """Counts writes; each takes a few ms, as a real commit does."""

    def __init__(self, delay: float = 0.003, fail: int = 0) -> None:
        self.delay = delay
        self.fail = fail
        self.writes: list[int] = []
        self.rows: dict[str, InvocationRecord] = {}
        self.threads: set[str] = set()

    def save_invocations(self, records: Sequence[InvocationRecord]) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise OSError("disk on fire")
        self.writes.append(len(records))
        for r in records:
            self.rows[r.id] = r


def record(i: int, status: str = "succeeded") -> InvocationRecord:
    return InvocationRecord(id=f"inv-{i}", function="f", status=status, created_at=0.0)  # type: ignore[arg-type]


async def test_steady_load_writes_once_per_interval() -> None:
    store = SlowStore()
    rec = Recorder(store, interval=0.05)  # type: ignore[arg-type]
    rec.start()
    try:
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 0.5:  # ~0.5 s of calls, one every ~0.2 ms
            rec.add(record(i))
            i += 1
            await asyncio.sleep(0.0002)
        await rec.flush()
        elapsed = time.monotonic() - t0
    finally:
        await rec.close()
    assert len(store.rows) == i
    # One transaction per interval (not one per write that finished while calls kept coming).
    assert len(store.writes) <= elapsed / 0.05 + 2, store.writes
    assert store.threads == {"spanfaas-recorder_0"}  # one thread: one warm connection


async def test_flush_waits_for_what_was_added_and_get_sees_pending() -> None:
    store = SlowStore(delay=0.01)
    rec = Recorder(store, interval=0.05)  # type: ignore[arg-type]
    rec.start()
    try:
        rec.add(record(1))
        assert rec.get("inv-1") is not None
        rec.add(record(1, "failed"))  # a newer version of the same record wins
        await rec.flush()
        assert store.rows["inv-1"].status == "failed"
        await rec.flush()  # nothing pending: returns at once
    finally:
        await rec.close()


async def test_store_failure_keeps_records_and_retries() -> None:
    store = SlowStore(fail=1)
    rec = Recorder(store, interval=0.01)  # type: ignore[arg-type]
    rec.start()
    try:
        rec.add(record(1))
        await asyncio.wait_for(rec.flush(), 5)
        assert "inv-1" in store.rows
    finally:
        await rec.close()


async def test_close_writes_everything_left() -> None:
    store = SlowStore(delay=0.02)
    rec = Recorder(store, interval=0.01, max_batch=3)  # type: ignore[arg-type]
    rec.start()
    for i in range(10):
        rec.add(record(i))
    await asyncio.sleep(0.015)  # close while the first chunk is being written
    await rec.close()
    assert len(store.rows) == 10
