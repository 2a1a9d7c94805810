"""EventService on its own (real SQLite, no gateway), fed by the in-memory
EventSource: routing, one invocation per function, de-duplication, wake-ups."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from spanfaas.config import EventSettings
from spanfaas.events import EventSource
from spanfaas.events.base import make_event
from spanfaas.events.memory import MemorySource
from spanfaas.events.service import EventService
from spanfaas.model import FunctionRecord, FunctionSpec, Trigger
from spanfaas.store import SQLiteStore


def fn(name: str, *triggers: Trigger) -> FunctionRecord:
    return FunctionRecord(name=name, version=1, digest="d", spec=FunctionSpec(name=name, triggers=list(triggers)), created_at=time.time())


async def test_memory_source_through_the_service(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    wakes: list[int] = []
    functions = {
        "a": fn("a", Trigger(type="order.*"), Trigger(source="/shop")),  # both match: still one invocation
        "b": fn("b", Trigger(subject="x/*")),
        "c": fn("c", Trigger(type="payment.*")),
    }
    service = EventService(EventSettings(), store, CollectorRegistry(), functions=lambda: functions, wake=lambda: wakes.append(1))
    source = MemorySource()
    assert isinstance(source, EventSource)
    task = asyncio.create_task(source.run(service))
    try:
        event = lambda id: make_event({"specversion": "1.0", "id": id, "source": "/shop", "type": "order.created", "subject": "x/1"})
        [first] = await source.emit(event("1"))
        assert len(first.invocations) == 2 and not first.duplicate
        [again] = await source.emit(event("1"))
        assert again.duplicate and again.invocations == []
        records = store.list_invocations(limit=10)
        assert sorted(r.function for r in records) == ["a", "b"]
        full = store.get_invocation(first.invocations[0])
        assert full is not None and full.event is not None and full.event.proxy == "memory"
        assert full.content_type == "application/cloudevents+json" and full.status == "queued"
        assert wakes  # the dispatcher was told
    finally:
        task.cancel()
        store.close()
