"""The event tables: triggers added through the API, the (source, id) pairs seen
within the de-duplication window, fired schedule ticks, dead letters, and the
Redis consumer groups the readers have had.

``admit`` is the one write on the event path: in a single transaction it
checks an event against the window (or a schedule tick against the last one
fired) and enqueues its invocations, so an event is either remembered *and*
queued, or neither — a crash in between cannot lose it or run it twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import msgspec
from msgspec import Struct

from spanfaas.errors import Conflict
from spanfaas.model import ErrorInfo, Event, FunctionSpec, InvocationRecord, Trigger, TriggerRecord
from spanfaas.store import trigger_names
from spanfaas.store.sql import INV_COLS, RecordRefused, SQLStore, _reason, _row

__all__ = ["Admission", "DeadLetter", "EventQueries", "EventStore", "Refused", "Replay"]

_encode = msgspec.json.encode
_trigger_decoder = msgspec.json.Decoder(Trigger)
_spec_decoder = msgspec.json.Decoder(FunctionSpec)
_event_decoder = msgspec.json.Decoder(Event)
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_DLQ_COLS = "id, function, event, content_type, payload, error, attempts, created_at, failed_at"


class DeadLetter(Struct, kw_only=True):
    """An event invocation that failed every attempt; ``replay`` queues it again."""

    id: str
    """The id of the invocation that gave up."""
    function: str
    event: Event
    content_type: str
    payload: bytes = b""
    error: ErrorInfo | None = None
    attempts: int = 0
    created_at: float = 0.0
    failed_at: float = 0.0


class Admission(Struct, kw_only=True):
    """One event on its way into the queue, with the invocations it starts."""

    source: str
    id: str
    records: list[InvocationRecord]
    window: float = 0.0
    """Drop the event when (source, id) was seen less than this many seconds ago (0: no check)."""
    schedule: str = ""
    """A schedule's key: enqueue only if ``tick`` is later than the last tick it fired."""
    tick: float = 0.0
    letters: list[DeadLetter] = []
    """Stored in the stead of ``records`` if the store refuses them (``Refused``), after the same
    checks in the same transaction; each letter's error message then ends with the reason."""


class Refused(Struct, frozen=True, kw_only=True):
    """``admit``'s answer for an admission whose records the store refused: its ``letters`` were stored instead."""

    reason: str


Replay = Literal["queued", "gone", "undeployed"]
"""What ``replay_dead_letter`` did: queued it; nothing, the dead letter was gone (replayed or
removed meanwhile); nothing, its function is not deployed (the dead letter is kept)."""


class EventStore(Protocol):
    def put_trigger(self, record: TriggerRecord) -> None:
        """Add an API trigger; ``Conflict`` naming the other when one of the function's has its name:
        an API trigger, or one the manifest of its latest stored version declares (``trigger_names``)."""
        ...

    def list_triggers(self, function: str | None = None) -> list[TriggerRecord]:
        """Triggers added through the API (manifest triggers live in the function specs)."""
        ...

    def delete_trigger(self, id: str) -> bool: ...

    def admit(self, batch: Sequence[Admission], now: float) -> list[bool | Refused]:
        """Per admission, in one transaction: True when its records were enqueued,
        False when it was a duplicate (or a tick already fired), ``Refused`` when the
        store refused its records and its ``letters`` are stored in their stead."""
        ...

    def prune_seen(self, before: float) -> int:
        """Forget (source, id) pairs seen before ``before``."""
        ...

    def last_tick(self, schedule: str, default: float) -> float:
        """The last tick the schedule fired; ``default`` (stored) when it never did."""
        ...

    def forget_schedules(self, schedules: Sequence[str]) -> None:
        """Drop the marks of schedules that are gone: one that comes back starts afresh."""
        ...

    def stream_group_known(self, key: str) -> bool:
        """Whether a reader of this control plane has had the consumer group ``key`` (``server|stream|group``)."""
        ...

    def remember_stream_group(self, key: str, now: float) -> None:
        """Record that the consumer group exists (again: no error)."""
        ...

    def put_dead_letter(self, letter: DeadLetter) -> None: ...

    def discard_dead_letter(self, id: str) -> bool:
        """Remove a dead letter (its invocation outlived it: a re-run succeeded; or a user removed
        it: ``DELETE /v1/events/dlq/{id}``); False when there was none."""
        ...

    def list_dead_letters(
        self, function: str | None = None, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        """Newest first, by ``failed_at`` then ``id`` (a total order); ``after``: only those after
        this position (``(failed_at, id)`` of the last of the page before) in that order."""
        ...

    def get_dead_letter(self, id: str) -> DeadLetter | None: ...

    def replay_dead_letter(self, id: str, record: InvocationRecord) -> Replay:
        """Remove the dead letter and enqueue ``record`` in one transaction, if ``record.function``
        is deployed (checked in it, under the function's lock, which ``delete_function`` takes:
        a remove is before, or after, the whole of it).  ``RecordRefused``: the store refused
        ``record`` (the dead letter is kept)."""
        ...


def _named_twice(function: str, name: str, id: str) -> str:
    return (f"function '{function}' has a trigger named '{name}' already: '{id}'; give this one another name, "
            f"or remove that one first (spanfaas triggers rm {id})")  # fmt: skip


class EventQueries(SQLStore):
    """``EventStore`` on the SQL dialects (SQLite, PostgreSQL)."""

    def put_trigger(self, record: TriggerRecord) -> None:
        with self._tx() as cur:
            if record.trigger.name:  # checked and written under one lock: two adds of a name cannot both pass
                self._lock(cur, trigger_names.LOCK.format(record.function))  # nor an add and a deploy (put_function)
                cur.execute(self._q("SELECT id, spec FROM triggers WHERE function = ?"), (record.function,))
                for id, spec in cur.fetchall():
                    if _trigger_decoder.decode(spec).name == record.trigger.name:
                        raise Conflict(_named_twice(record.function, record.trigger.name, id))
                cur.execute(
                    self._q("SELECT spec FROM functions WHERE name = ? ORDER BY version DESC LIMIT 1"), (record.function,)
                )
                row = cur.fetchone()
                latest = _spec_decoder.decode(row[0]) if row is not None else None
                if (clash := trigger_names.api_clash(record.function, record.trigger.name, latest)) is not None:
                    raise clash
            cur.execute(
                self._q("INSERT INTO triggers (id, function, spec, created_at) VALUES (?, ?, ?, ?)"),
                (record.id, record.function, _encode(record.trigger).decode(), record.created_at),
            )

    def list_triggers(self, function: str | None = None) -> list[TriggerRecord]:
        with self._read() as cur:
            if function is None:
                cur.execute("SELECT id, function, spec, created_at FROM triggers ORDER BY created_at, id")
            else:
                cur.execute(
                    self._q("SELECT id, function, spec, created_at FROM triggers WHERE function = ? ORDER BY created_at, id"),
                    (function,),
                )
            rows = cur.fetchall()
        return [
            TriggerRecord(id=id, function=fn, trigger=_trigger_decoder.decode(spec), origin="api", created_at=at)
            for id, fn, spec, at in rows
        ]

    def delete_trigger(self, id: str) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM triggers WHERE id = ?"), (id,))
            deleted = bool(cur.rowcount)
            # Its schedule's mark too: a trigger made again under this id starts from
            # its creation, not from the ticks missed while it did not exist.
            prefix = f"{id}|"
            cur.execute(self._q("DELETE FROM schedule_ticks WHERE substr(key, 1, ?) = ?"), (len(prefix), prefix))
            return deleted

    def admit(self, batch: Sequence[Admission], now: float) -> list[bool | Refused]:
        seen = self._q(
            "INSERT INTO events_seen (source, id, seen_at) VALUES (?, ?, ?) ON CONFLICT (source, id) "
            "DO UPDATE SET seen_at = excluded.seen_at WHERE events_seen.seen_at < ?"
        )
        advance = self._q("UPDATE schedule_ticks SET last_tick = ? WHERE key = ? AND last_tick < ?")
        # Rows are taken in one order: two gateways admitting the same events in other
        # orders (a redelivery) would each wait for the other's (PostgreSQL: deadlock, and
        # both batches failed).  Stable: the first of equal events wins; a schedule's ticks ascend.
        order = sorted(range(len(batch)), key=lambda i: (batch[i].schedule, batch[i].tick, batch[i].source, batch[i].id))
        out: dict[int, bool | Refused] = {}
        what = f"the event {batch[0].id!r} from {batch[0].source!r}" if len(batch) == 1 else f"one of {len(batch)} events"
        with self._refusals(what), self._tx() as cur:
            for i in order:
                item = batch[i]
                if item.schedule:
                    cur.execute(advance, (item.tick, item.schedule, item.tick))
                    if cur.rowcount != 1:
                        out[i] = False
                        continue
                if item.window > 0:
                    cur.execute(seen, (_seen_key(item.source), _seen_key(item.id), now, now - item.window))
                    if cur.rowcount != 1:
                        out[i] = False
                        continue
                if item.letters:
                    out[i] = self._insert_or_keep(cur, item)
                    continue
                self._insert_invocations(cur, item.records)
                out[i] = True
        return [out[i] for i in range(len(batch))]

    def _insert_or_keep(self, cur: Any, item: Admission) -> bool | Refused:
        """Enqueue the records of ``item``; if the store refuses them, its dead letters instead
        (a savepoint: its checks, done already, stand either way)."""
        cur.execute("SAVEPOINT spanfaas_admit")
        try:
            self._insert_invocations(cur, item.records)
        except Exception as exc:
            if not (isinstance(exc, RecordRefused) or self._refuses(exc)):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT spanfaas_admit")
            reason = str(exc) if isinstance(exc, RecordRefused) else _reason(exc)
            for letter in item.letters:
                said = letter.error or ErrorInfo(kind="infra", type="RecordRefused", message="not queued")
                error = msgspec.structs.replace(said, message=f"{said.message}: {reason}")
                self._insert_dead_letter(cur, msgspec.structs.replace(letter, error=error))
            cur.execute("RELEASE SAVEPOINT spanfaas_admit")
            return Refused(reason=reason)
        cur.execute("RELEASE SAVEPOINT spanfaas_admit")
        return True

    def _insert_invocations(self, cur: Any, records: Sequence[InvocationRecord]) -> None:
        if not records:
            return
        slots = "(" + ", ".join("?" * len(INV_COLS.split(","))) + ")"
        cur.execute(
            self._q(f"INSERT INTO invocations ({INV_COLS}) VALUES {', '.join([slots] * len(records))}"),
            [v for r in records for v in _row(r)],
        )

    def prune_seen(self, before: float) -> int:
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM events_seen WHERE seen_at < ?"), (before,))
            return int(cur.rowcount)

    def forget_schedules(self, schedules: Sequence[str]) -> None:
        if not schedules:
            return
        with self._tx() as cur:
            for key in schedules:
                cur.execute(self._q("DELETE FROM schedule_ticks WHERE key = ?"), (key,))

    def last_tick(self, schedule: str, default: float) -> float:
        with self._tx() as cur:
            cur.execute(
                self._q("INSERT INTO schedule_ticks (key, last_tick) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"),
                (schedule, default),
            )
            cur.execute(self._q("SELECT last_tick FROM schedule_ticks WHERE key = ?"), (schedule,))
            return float(cur.fetchone()[0])

    def stream_group_known(self, key: str) -> bool:
        with self._read() as cur:
            cur.execute(self._q("SELECT 1 FROM stream_groups WHERE key = ?"), (key,))
            return cur.fetchone() is not None

    def remember_stream_group(self, key: str, now: float) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q("INSERT INTO stream_groups (key, seen_at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"), (key, now)
            )

    def put_dead_letter(self, letter: DeadLetter) -> None:
        with self._refusals(f"the dead letter {letter.id}"), self._tx() as cur:
            self._insert_dead_letter(cur, letter)

    def _insert_dead_letter(self, cur: Any, d: DeadLetter) -> None:
        cur.execute(
            self._q(
                f"INSERT INTO dead_letters ({_DLQ_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET error = excluded.error, attempts = excluded.attempts, "
                "failed_at = excluded.failed_at"
            ),
            (d.id, d.function, _encode(d.event).decode(), d.content_type, d.payload,
             _encode(d.error).decode() if d.error is not None else None, d.attempts, d.created_at, d.failed_at),
        )  # fmt: skip

    def discard_dead_letter(self, id: str) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM dead_letters WHERE id = ?"), (id,))
            return bool(cur.rowcount)

    def list_dead_letters(
        self, function: str | None = None, limit: int = 100, after: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        where: list[str] = []
        args: list[Any] = []
        if function is not None:
            where.append("function = ?")
            args.append(function)
        if after is not None:
            where.append("(failed_at < ? OR (failed_at = ? AND id < ?))")
            args += [after[0], after[0], after[1]]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = self._q(f"SELECT {_DLQ_COLS} FROM dead_letters {clause}ORDER BY failed_at DESC, id DESC LIMIT ?")
        with self._read() as cur:
            self._rows(cur, sql, (*args, int(limit)))
            return [_dead_letter(r) for r in cur.fetchall()]

    def get_dead_letter(self, id: str) -> DeadLetter | None:
        with self._read() as cur:
            self._rows(cur, self._q(f"SELECT {_DLQ_COLS} FROM dead_letters WHERE id = ?"), (id,))
            row = cur.fetchone()
        return _dead_letter(row) if row else None

    def replay_dead_letter(self, id: str, record: InvocationRecord) -> Replay:
        with self._refusals(f"the replay of dead letter {id}"), self._tx() as cur:
            self._lock(cur, "function:" + record.function)
            cur.execute(self._q("SELECT 1 FROM functions WHERE name = ? LIMIT 1"), (record.function,))
            if cur.fetchone() is None:
                return "undeployed"
            cur.execute(self._q("DELETE FROM dead_letters WHERE id = ?"), (id,))
            if cur.rowcount != 1:
                return "gone"
            self._insert_invocations(cur, [record])
            return "queued"


_SEEN_KEY_MAX = 1024
"""UTF-8 bytes of an event's source or id kept as they are in ``events_seen``; a longer one
is kept as its digest.  PostgreSQL's index takes at most ~2.7 kB per (source, id) row."""


def _seen_key(value: str) -> str:
    """``value`` as ``events_seen`` keeps it: itself, or ``sha256:<hex>`` of it when it is long
    or holds a NUL (PostgreSQL's text cannot).  Any event's (source, id) is then stored, and
    de-duplicated, by every store: one that PostgreSQL refused was answered 503 'retry' for ever,
    and held back every later entry of its Redis stream."""
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= _SEEN_KEY_MAX and b"\x00" not in data:
        return value
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dead_letter(row: Sequence[Any]) -> DeadLetter:
    id, function, event, ct, payload, error, attempts, created, failed = row
    return DeadLetter(
        id=id, function=function, event=_event_decoder.decode(event), content_type=ct,
        payload=bytes(payload) if payload else b"", error=_error_decoder.decode(error) if error else None,
        attempts=int(attempts), created_at=created, failed_at=failed,
    )  # fmt: skip
