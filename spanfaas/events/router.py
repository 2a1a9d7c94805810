"""The trigger router: which functions an event starts.

Triggers come from two places: the ``[[triggers]]`` of each deployed
function's manifest (ids ``<function>:<name or index>``) and the store
(added through the API, ids ``trg_…``).  The table is rebuilt when the local
registry changes (a deploy here), when a trigger is added or removed, and
every ``refresh`` seconds (deploys through other gateways sharing the store).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from spanfaas.model import FunctionRecord, TriggerRecord, manifest_trigger_id
from spanfaas.store import Store

__all__ = ["Router", "TriggerTable", "manifest_triggers"]

Functions = Callable[[], Mapping[str, FunctionRecord]]


def manifest_triggers(record: FunctionRecord) -> list[TriggerRecord]:
    return [
        TriggerRecord(id=manifest_trigger_id(record.name, t, i), function=record.name, trigger=t, origin="manifest",
                      created_at=record.created_at)
        for i, t in enumerate(record.spec.triggers)
    ]  # fmt: skip


class _Compiled:
    __slots__ = ("checks", "record")

    def __init__(self, record: TriggerRecord) -> None:
        t = record.trigger
        self.record = record
        checks: list[tuple[str, re.Pattern[str] | None]] = []
        for attr, pattern in (("source", t.source), ("type", t.type), ("subject", t.subject), *t.filters.items()):
            if pattern is None:
                continue
            checks.append((attr, None if pattern == "*" else re.compile(fnmatch.translate(pattern))))
        self.checks = checks

    def matches(self, attrs: Mapping[str, Any]) -> bool:
        for attr, rx in self.checks:
            value = attrs.get(attr)
            if value is None:
                return False
            if rx is not None and rx.match(str(value)) is None:
                return False
        return True


class TriggerTable:
    """The triggers in force, compiled; ``match`` gives one trigger per function."""

    def __init__(self, records: Iterable[TriggerRecord]) -> None:
        self.records = list(records)
        self.schedules = [r for r in self.records if r.trigger.schedule]
        self._routes = [_Compiled(r) for r in self.records if not r.trigger.schedule]

    def match(self, attrs: Mapping[str, Any]) -> list[TriggerRecord]:
        out: dict[str, TriggerRecord] = {}
        for c in self._routes:
            if c.record.function not in out and c.matches(attrs):
                out[c.record.function] = c.record
        return list(out.values())


class Router:
    def __init__(self, store: Store, functions: Functions, *, refresh: float = 2.0) -> None:
        self.store = store
        self.functions = functions
        self.refresh_every = refresh
        self._table = TriggerTable(())
        self._key: object = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    def _local_key(self) -> object:
        return tuple((n, r.version) for n, r in self.functions().items())

    async def table(self) -> TriggerTable:
        """The current table (rebuilt first when something changed)."""
        if self._key != self._local_key() or time.monotonic() - self._loaded_at > self.refresh_every:
            await self.reload()
        return self._table

    def current(self) -> TriggerTable:
        """The table as last built, without checking for changes."""
        return self._table

    async def reload(self) -> TriggerTable:
        async with self._lock:
            key = self._local_key()
            stored, api = await asyncio.gather(
                asyncio.to_thread(self.store.list_functions), asyncio.to_thread(self.store.list_triggers)
            )
            functions = {r.name: r for r in stored}
            functions.update(self.functions())  # this gateway's view is the freshest
            records = [t for f in sorted(functions.values(), key=lambda f: f.name) for t in manifest_triggers(f)]
            records += [t for t in api if t.function in functions]
            self._table = TriggerTable(records)
            self._key = key
            self._loaded_at = time.monotonic()
            return self._table
