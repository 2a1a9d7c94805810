"""Scheduler unit fixtures: SpanningInfrastructure over in-memory infrastructures
(the callers' test double) with declared capabilities, and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from spanfaas.config import InfraConfig, SchedulerSettings
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Bundle
from spanfaas.scheduler import SpanningInfrastructure

from spanning_helpers import CODE, Clock


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    d = tmp_path / "fn"
    d.mkdir()
    (d / "handler.py").write_text(CODE)
    return Bundle(digest="d" * 64, path=str(d))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def spanning(clock: Clock) -> AsyncIterator[Callable[..., SpanningInfrastructure]]:
    made: list[SpanningInfrastructure] = []

    async def build(*configs: InfraConfig, **settings: object) -> SpanningInfrastructure:
        children = [(InMemoryInfrastructure(c.name), c) for c in configs]
        sp = SpanningInfrastructure(children, SchedulerSettings(**settings), clock=clock)  # type: ignore[arg-type]
        await sp.start()
        made.append(sp)
        return sp

    yield build  # type: ignore[misc]
    for sp in made:
        await sp.close()
