"""What SQLite and PostgreSQL share: the queries and the row codec.

Queries are written with ``?`` placeholders; a dialect rewrites them once
(``PostgresStore`` to ``%s``).  Subclasses provide ``_tx()`` (a cursor inside
a write transaction), ``_read()`` (a cursor for one read) and the claim query.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Literal, NamedTuple

import msgspec

from spanfaas.errors import InfraError, InfraUnavailable, InvalidRequest, format_sizes
from spanfaas.model import ErrorInfo, Event, FunctionRecord, FunctionSpec, InvocationRecord, TokenRecord, Trigger
from spanfaas.store import trigger_names
from spanfaas.store.migrations import MIGRATIONS, render

__all__ = ["INV_COLS", "InvocationPage", "RecordRefused", "SQLStore", "StoreSchemaTooNew", "StoreUnavailable"]

INV_COLS = (
    "id, function, status, mode, content_type, payload, output, output_type, error, logs, "
    "attempts, idempotency_key, infra, created_at, started_at, finished_at, not_before, "
    "duration_ms, cold, event, reruns, origin, reclaims, tried"
)
_INV_LIST_COLS = INV_COLS.replace(" payload,", " NULL AS payload,")
_INV_BARE_COLS = _INV_LIST_COLS.replace(" output,", " NULL AS output,")
_INV_SLOTS = ", ".join("?" * len(INV_COLS.split(",")))
_INV_UPDATE = ", ".join(
    f"{c} = excluded.{c}" for c in (s.strip() for s in INV_COLS.split(",")) if c != "id"
)
_SIZE_OF_ROW = 512
"""Bytes a listed record takes besides its logs, output and error text (ids, times, names), about."""
_FN_COLS = "name, version, digest, spec, created_at"
_CHUNK = 100
"""Rows per multi-row INSERT: few trips into the database, short holds of the GIL."""
_MARKS = 1000
"""Records per statement of ``mark_started`` and ``extend_leases`` (three values each at most:
SQLite and PostgreSQL take 32766 and 65535 values a statement)."""
_CHUNK_BYTES = 64 * 2**20
"""Bytes of payloads, outputs and logs per multi-row INSERT (one row may have more):
PostgreSQL ends the connection on a message over 1 GiB, and 16 outcomes of 32 MiB
payloads and results (or the outcomes that gathered while the store was down) made
one that failed each time it was written again."""


def _upsert(n: int) -> str:
    """Records written as they are, except over a finished one: the first outcome stored is
    the one clients read, and a run of the same invocation that ended later elsewhere (its
    first gateway lost its claim, and another ran it again) does not replace it."""
    values = ", ".join([f"({_INV_SLOTS})"] * n)
    return (
        f"INSERT INTO invocations ({INV_COLS}) VALUES {values} "
        f"ON CONFLICT (id) DO UPDATE SET {_INV_UPDATE}, lease_until = NULL, owner = NULL "
        "WHERE invocations.status NOT IN ('succeeded', 'failed')"
    )
_TOKEN_COLS = "id, name, scopes, token_hash, created_at"
_GIVE_BACK = (
    "UPDATE invocations SET status = 'queued', lease_until = NULL, owner = NULL, "
    "reruns = reruns + started, reclaims = reclaims + 1 - started, attempts = attempts - 1 + started "
    "WHERE {rows}"
)
"""Claims whose gateway is gone, back to the queue: a run that started left no outcome (a
re-run next, limited by ``CRASH_RERUNS``); a claim whose run never started was no run at
all (its ``attempts`` taken back; ``reclaims`` limited by ``CRASH_RECLAIMS``)."""

_spec_decoder = msgspec.json.Decoder(FunctionSpec)
_error_decoder = msgspec.json.Decoder(ErrorInfo)
_event_decoder = msgspec.json.Decoder(Event)
_tried_decoder = msgspec.json.Decoder(list[str])
_trigger_decoder = msgspec.json.Decoder(Trigger)
_scopes_decoder = msgspec.json.Decoder(list[Literal["admin", "deploy", "invoke"]])
_encode = msgspec.json.encode


class StoreSchemaTooNew(InvalidRequest):
    slug, title = "store-schema-too-new", "Store schema too new"


class StoreUnavailable(InfraUnavailable):
    """The store cannot take a write, or answer, for now (PostgreSQL down; SQLite locked past
    its busy timeout, its disk full, read-only or failing): a 503 that says why.  Raised
    with ``retry_after=`` seconds, which the gateway also sends as Retry-After.  A bug in
    a query is not this: it stays a 500."""

    slug, title = "store-unavailable", "Store unavailable"


class RecordRefused(InfraError):
    """The store refused a record for a value in it (``save_invocations``, ``enqueue_many``,
    ``admit``): writing it again fails again, where a store that failed (down, locked,
    restarting) takes it later.  A batch it was in took nothing (one transaction)."""

    slug, title = "record-refused", "Record refused by the store"


class InvocationPage(NamedTuple):
    """One page of a listing of invocations (``Store.page_invocations``)."""

    records: list[InvocationRecord]
    left_out: dict[str, int]
    """Ids whose output was left out for its size, and that size in bytes."""
    more: bool
    """There are records after the last of ``records``: the next page starts after it."""


class SQLStore:
    """Queries common to both dialects."""

    exclusive = False
    _real = "REAL"
    _blob = "BLOB"
    _refused: tuple[type[Exception], ...] = (ValueError, OverflowError)
    """Errors that say a value was refused, not that the store failed: text the driver
    cannot encode (``UnicodeEncodeError``), a number it cannot bind; dialects add theirs."""
    _max_values: int | None = None
    """Bytes of values the database takes in one statement, where that is less than a
    record may hold (PostgreSQL: a message of at most 1 GiB, or it ends the connection,
    which reads as the store failing): a record over it is refused before it is sent."""

    # -- hooks -------------------------------------------------------------------

    def _q(self, sql: str) -> str:
        return sql

    def _tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _rows_to_change(self, select: str) -> str:
        """The WHERE of an UPDATE of ``invocations`` that changes the rows whose ids ``select``
        (a SELECT of ``i.id`` from ``invocations i``) finds.  PostgreSQL locks them first, in one
        order, that of their ids: the marks of runs, the leases extended, the claims given back
        and the outcomes stored meet the same rows (locked in other orders, by the join or the
        scan each happened to use, they deadlocked, and one of the writes failed); and it reads
        each by its id (see ``PostgresStore``).  SQLite has one writer at a time."""
        return f"id IN ({select})"

    def _lock(self, cur: Any, key: str) -> None:
        """Serialize writers on ``key`` inside the current transaction."""

    def _changed(self, cur: Any, what: str) -> None:
        """``what`` (a row of ``generations``) changed in the current transaction."""
        cur.execute(self._q("UPDATE generations SET value = value + 1 WHERE name = ?"), (what,))

    def _refuses(self, exc: Exception) -> bool:
        """Does ``exc`` say a value was refused (writing it again fails again), not that the store failed?"""
        return isinstance(exc, self._refused)

    @contextmanager
    def _refusals(self, what: str) -> Iterator[None]:
        """``RecordRefused`` ("the store refused WHAT: why") for an error that says a value of
        the write was refused; any other error is the store failing, and passes as it is."""
        try:
            yield
        except Exception as exc:
            if not self._refuses(exc):
                raise
            raise RecordRefused(f"the store refused {what}: {_reason(exc)}") from exc

    def _rows(self, cur: Any, sql: str, args: Sequence[Any]) -> None:
        """Run a query whose rows hold payloads (bytes): as they are, where the dialect can say
        so (PostgreSQL's text form of a bytea is hex, twice its size: over 512 MiB, the server
        cannot build it, and the record could never be read)."""
        cur.execute(sql, args)

    def _claim_sql(self) -> str:
        """An UPDATE … RETURNING the invocation columns of the due records it took."""
        raise NotImplementedError

    def _claim_args(self, now: float, lease: float, limit: int, owner: str) -> tuple[Any, ...]:
        return (now, now + lease, owner, now, int(limit))

    def close(self) -> None:
        raise NotImplementedError

    def take_ownership(self) -> None:
        """Shared stores have no owner."""

    # -- schema ------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as cur:
            self._lock(cur, "spanfaas-migrations")
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            cur.execute("SELECT version FROM schema_version")
            row = cur.fetchone()
            current = row[0] if row else 0
            if current > len(MIGRATIONS):
                import spanfaas  # the package, for its version (it imports this module first)

                raise StoreSchemaTooNew(
                    f"the store's schema is version {current}, newer than this spanfaas ({spanfaas.__version__}) "
                    f"knows ({len(MIGRATIONS)}): a newer spanfaas has upgraded the store, and this one does not "
                    "start on a schema it does not know; upgrade spanfaas here to the version the other gateways "
                    "run (in a rolling upgrade, upgrade each gateway before it restarts: no gateway of the older "
                    "version can start on this store again)"
                )
            for statements in MIGRATIONS[current:]:
                for statement in statements:
                    cur.execute(render(statement, real=self._real, blob=self._blob))
            if row is None:
                cur.execute(self._q("INSERT INTO schema_version (version) VALUES (?)"), (len(MIGRATIONS),))
            elif current != len(MIGRATIONS):
                cur.execute(self._q("UPDATE schema_version SET version = ?"), (len(MIGRATIONS),))

    def schema_version(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT version FROM schema_version")
            return int(cur.fetchone()[0])

    # -- functions ---------------------------------------------------------------

    def put_function(self, name: str, digest: str, spec: FunctionSpec, *, bundle: bytes | None = None) -> FunctionRecord:
        now = time.time()
        with self._tx() as cur:
            self._lock(cur, "function:" + name)
            if any(t.name for t in spec.triggers):
                self._check_names(cur, name, spec)
            cur.execute(self._q("SELECT COALESCE(MAX(version), 0) FROM functions WHERE name = ?"), (name,))
            version = int(cur.fetchone()[0]) + 1
            cur.execute(
                self._q(f"INSERT INTO functions ({_FN_COLS}) VALUES (?, ?, ?, ?, ?)"),
                (name, version, digest, _encode(spec).decode(), now),
            )
            if bundle is not None:
                self._keep_blob(cur, digest, bundle, now)
            self._changed(cur, "functions")
        return FunctionRecord(name=name, version=version, digest=digest, spec=spec, created_at=now)

    def _check_names(self, cur: Any, name: str, spec: FunctionSpec) -> None:
        """``Conflict`` if ``spec`` declares the name of an API trigger of ``name`` (see ``trigger_names``)."""
        self._lock(cur, trigger_names.LOCK.format(name))
        cur.execute(self._q("SELECT id, spec FROM triggers WHERE function = ?"), (name,))
        api = {t.name: id for id, t in ((id, _trigger_decoder.decode(s)) for id, s in cur.fetchall()) if t.name}
        if (clash := trigger_names.manifest_clash(name, spec, api)) is not None:
            raise clash

    def _keep_blob(self, cur: Any, digest: str, data: bytes, now: float) -> bool:
        """Insert the blob unless the store has it; the bytes travel only then.

        Under the digest's lock, which ``collect_blobs`` takes too: a collection either
        sees the version that refers to the blob, or deleted it before this looks."""
        self._lock(cur, "blob:" + digest)
        cur.execute(self._q("SELECT 1 FROM blobs WHERE digest = ?"), (digest,))
        if cur.fetchone() is not None:
            return False
        cur.execute(
            self._q("INSERT INTO blobs (digest, data, size, created_at) VALUES (?, ?, ?, ?)"),
            (digest, data, len(data), now),
        )
        return True

    def get_function(self, name: str) -> FunctionRecord | None:
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {_FN_COLS} FROM functions WHERE name = ? ORDER BY version DESC LIMIT 1"),
                (name,),
            )
            row = cur.fetchone()
        return _function(row) if row else None

    def list_functions(self) -> list[FunctionRecord]:
        with self._read() as cur:
            cur.execute(
                f"SELECT {_FN_COLS} FROM functions f WHERE version = "
                "(SELECT MAX(version) FROM functions g WHERE g.name = f.name) ORDER BY name"
            )
            return [_function(r) for r in cur.fetchall()]

    def function_versions(self, name: str) -> list[FunctionRecord]:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {_FN_COLS} FROM functions WHERE name = ? ORDER BY version"), (name,))
            return [_function(r) for r in cur.fetchall()]

    def delete_function(self, name: str) -> bool:
        with self._tx() as cur:
            self._lock(cur, "function:" + name)  # as replay_dead_letter does: it queues for a function still there
            cur.execute(self._q("DELETE FROM functions WHERE name = ?"), (name,))
            if not cur.rowcount:
                return False
            # Its API triggers go with it: hidden while it is gone, they would start a function
            # deployed later under the same name.  So do its schedules' marks (manifest triggers
            # are `<name>:…`): a redeploy starts from then, not from the ticks of its absence.
            cur.execute(self._q("SELECT id FROM triggers WHERE function = ?"), (name,))
            prefixes = [f"{name}:"] + [f"{id}|" for (id,) in cur.fetchall()]
            for prefix in prefixes:
                cur.execute(self._q("DELETE FROM schedule_ticks WHERE substr(key, 1, ?) = ?"), (len(prefix), prefix))
            cur.execute(self._q("DELETE FROM triggers WHERE function = ?"), (name,))
            self._changed(cur, "functions")
            return True

    def function_digests(self) -> set[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT digest FROM functions")
            return {r[0] for r in cur.fetchall()}

    # -- bundles: blobs the stored versions refer to -------------------------------

    def put_blob(self, digest: str, data: bytes) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("SELECT 1 FROM functions WHERE digest = ? LIMIT 1"), (digest,))
            if cur.fetchone() is None:
                return False  # nobody would ever collect it
            if not self._keep_blob(cur, digest, data, time.time()):
                return False
            self._changed(cur, "functions")  # versions other gateways could not deploy may deploy now
            return True

    def get_blob(self, digest: str) -> bytes | None:
        with self._read() as cur:
            cur.execute(self._q("SELECT data FROM blobs WHERE digest = ?"), (digest,))
            row = cur.fetchone()
        return bytes(row[0]) if row is not None else None

    def missing_blobs(self) -> set[str]:
        with self._read() as cur:
            cur.execute("SELECT DISTINCT digest FROM functions f WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = f.digest)")
            return {r[0] for r in cur.fetchall()}

    def collect_blobs(self, digests: Iterable[str]) -> set[str]:
        deleted: set[str] = set()
        with self._tx() as cur:
            for digest in sorted(set(digests)):  # locks in one order: no deadlock between two collections
                self._lock(cur, "blob:" + digest)
                cur.execute(
                    self._q("DELETE FROM blobs WHERE digest = ? AND NOT EXISTS (SELECT 1 FROM functions WHERE digest = ?)"),
                    (digest, digest),
                )
                if cur.rowcount:
                    deleted.add(digest)
        return deleted

    def functions_generation(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT value FROM generations WHERE name = 'functions'")
            return int(cur.fetchone()[0])

    # -- removes a site still owes ---------------------------------------------------

    def owe_remove(self, site: str, function: str, now: float) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q("INSERT INTO owed_removes (site, function, since) VALUES (?, ?, ?) "
                        "ON CONFLICT (site, function) DO NOTHING"),
                (site, function, now),
            )  # fmt: skip

    def owed_removes(self, site: str | None = None) -> list[tuple[str, str]]:
        with self._read() as cur:
            if site is None:
                cur.execute("SELECT site, function FROM owed_removes ORDER BY site, function")
            else:
                cur.execute(self._q("SELECT site, function FROM owed_removes WHERE site = ? ORDER BY function"), (site,))
            return [(str(s), str(f)) for s, f in cur.fetchall()]

    def settle_remove(self, site: str, function: str) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM owed_removes WHERE site = ? AND function = ?"), (site, function))
            return bool(cur.rowcount)

    # -- invocations -------------------------------------------------------------

    def create_invocation(self, record: InvocationRecord) -> None:
        with self._tx() as cur:
            cur.execute(self._q(f"INSERT INTO invocations ({INV_COLS}) VALUES ({_INV_SLOTS})"), _row(record))

    def save_invocations(self, records: Sequence[InvocationRecord]) -> None:
        if not records:
            return
        # One row may be hit once per statement; the rows in the order of their ids (see _rows_to_change).
        unique = sorted({r.id: r for r in records}.values(), key=lambda r: r.id)
        if self._max_values is not None:
            for r in unique:
                _check_size(r, self._max_values)
        with self._refusals(_invocations(unique)), self._tx() as cur:
            # Many rows per statement: one trip into the database (and, for
            # SQLite, one release of the GIL) per chunk, not one per row.
            for chunk in _chunks(unique):
                params = [v for r in chunk for v in _row(r)]
                cur.execute(self._q(_upsert(len(chunk))), params)

    def get_invocation(self, id: str) -> InvocationRecord | None:
        with self._read() as cur:
            self._rows(cur, self._q(f"SELECT {INV_COLS} FROM invocations WHERE id = ?"), (id,))
            row = cur.fetchone()
        return _invocation(row) if row else None

    def list_invocations(
        self, function: str | None = None, limit: int = 50, status: str | None = None, *, outputs: bool = True
    ) -> list[InvocationRecord]:
        where, args = _filters(function, status)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._read() as cur:
            cur.execute(
                self._q(f"SELECT {_INV_LIST_COLS if outputs else _INV_BARE_COLS} FROM invocations {clause}ORDER BY created_at DESC LIMIT ?"),
                (*args, int(limit)),
            )
            return [_invocation(r) for r in cur.fetchall()]

    def page_invocations(
        self, function: str | None = None, status: str | None = None, *, limit: int = 50,
        after: tuple[float, str] | None = None, outputs: bool = True, max_output: int = 2**16, max_bytes: int = 2**22,
    ) -> InvocationPage:
        # Read in chunks sized by the rows read so far: a page of small records is a query or
        # two, and one of large logs stops at its budget without the rest read into memory.
        where, args = _filters(function, status)
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        output = "CASE WHEN length(output) <= ? THEN output END AS output" if outputs else "NULL AS output"
        cols = _INV_LIST_COLS.replace(" output,", f" {output},")
        sql = self._q(
            f"SELECT {cols}, length(output) FROM invocations WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        position = after if after is not None else (float("inf"), "")
        records: list[InvocationRecord] = []
        left_out: dict[str, int] = {}
        used, chunk = 0, min(limit, 32)
        with self._read() as cur:
            while True:
                head = (max_output,) if outputs else ()
                self._rows(cur, sql, (*head, *args, position[0], position[0], position[1], chunk + 1))
                rows = cur.fetchall()
                for n, row in enumerate(rows[:chunk], 1):
                    record, size = _invocation(row[:-1]), row[-1]
                    cost = _SIZE_OF_ROW + len(record.logs) + len(record.output) + (
                        len(record.error.message) + len(record.error.traceback) if record.error is not None else 0
                    )
                    if records and used + cost > max_bytes:  # it would pass the budget: it begins the next page
                        return InvocationPage(records, left_out, True)
                    records.append(record)
                    if outputs and size is not None and size > max_output:
                        left_out[record.id] = int(size)
                    used += cost
                    position = (record.created_at, record.id)
                    if len(records) == limit or used >= max_bytes:
                        return InvocationPage(records, left_out, len(rows) > n or self._any_after(cur, where, args, position))
                if len(rows) <= chunk:
                    return InvocationPage(records, left_out, False)
                average = used // len(records)
                chunk = max(1, min(limit - len(records), (max_bytes - used) // max(average, 1) + 1, 64))  # 64: small rows first, then huge ones, stay bounded

    def _any_after(self, cur: Any, where: list[str], args: list[Any], position: tuple[float, str]) -> bool:
        cur.execute(
            self._q(f"SELECT 1 FROM invocations WHERE {' AND '.join(where)} LIMIT 1"),
            (*args, position[0], position[0], position[1]),
        )
        return cur.fetchone() is not None

    # -- async queue ---------------------------------------------------------------

    def enqueue(self, record: InvocationRecord) -> tuple[InvocationRecord, bool]:
        return self.enqueue_many([record])[0]

    def enqueue_many(self, records: Sequence[InvocationRecord]) -> list[tuple[InvocationRecord, bool]]:
        insert = self._q(
            f"INSERT INTO invocations ({INV_COLS}) VALUES ({_INV_SLOTS}) "
            "ON CONFLICT (function, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
        )
        existing = self._q(f"SELECT {INV_COLS} FROM invocations WHERE function = ? AND idempotency_key = ?")
        # Keys are taken in one order, (function, key): two gateways enqueueing the same
        # keys in other orders would each wait for the other's (PostgreSQL: deadlock, and
        # every request of both batches failed).  Stable: the first of equal keys wins.
        order = sorted(range(len(records)), key=lambda i: (records[i].function, records[i].idempotency_key or ""))
        out: dict[int, tuple[InvocationRecord, bool]] = {}
        with self._refusals(_invocations(records)), self._tx() as cur:
            for i in order:
                record = records[i]
                cur.execute(insert, _row(record))
                if cur.rowcount == 1:
                    out[i] = (record, True)
                    continue
                self._rows(cur, existing, (record.function, record.idempotency_key))
                out[i] = (_invocation(cur.fetchone()), False)
        return [out[i] for i in range(len(records))]

    def claim(self, now: float, lease: float, limit: int, owner: str = "") -> list[InvocationRecord]:
        with self._tx() as cur:
            # its gateway died (or lost the store) during the claim: a re-run if its run started
            cur.execute(self._q(self._give_back(" AND i.lease_until < ?")), (now,))
            self._rows(cur, self._q(self._claim_sql()), self._claim_args(now, lease, limit, owner))
            rows = cur.fetchall()
        records = [_invocation(r) for r in rows]
        records.sort(key=lambda r: (r.not_before, r.created_at))
        return records

    def claim_next(self, now: float, lease: float, owner: str = "") -> InvocationRecord | None:
        got = self.claim(now, lease, 1, owner)
        return got[0] if got else None

    def extend_leases(self, ids: Sequence[str], until: float) -> None:
        if not ids:
            return
        unique = list(dict.fromkeys(ids))
        with self._tx() as cur:
            for at in range(0, len(unique), _MARKS):
                chunk = unique[at : at + _MARKS]
                select = f"SELECT i.id FROM invocations i WHERE i.id IN ({', '.join('?' * len(chunk))}) AND i.status = 'running'"
                cur.execute(self._q(f"UPDATE invocations SET lease_until = ? WHERE {self._rows_to_change(select)}"), [until, *chunk])

    def requeue_running(self) -> int:
        with self._tx() as cur:
            cur.execute(self._give_back(""))
            return int(cur.rowcount)

    def mark_started(self, claims: Mapping[str, str], started: bool = True) -> None:
        if not claims:
            return
        pairs = list(claims.items())
        with self._tx() as cur:
            for at in range(0, len(pairs), _MARKS):  # one statement per batch of marks, usually
                chunk = pairs[at : at + _MARKS]
                cur.execute(*self._marks(chunk, started))

    def _marks(self, marks: Sequence[tuple[str, str]], started: bool = True) -> tuple[str, list[Any]]:
        """The statement of ``mark_started`` for these (id, owner) marks (``started``: set, or write off), and its values."""
        values = ", ".join(["(?, ?)"] * len(marks))
        return (
            f"WITH m(id, owner) AS (VALUES {values}), "
            "l AS (SELECT i.id FROM invocations i JOIN m ON i.id = m.id AND i.owner = m.owner WHERE i.status = 'running') "
            f"UPDATE invocations SET started = {int(started)} FROM l WHERE invocations.id = l.id",
            [v for pair in marks for v in pair],
        )

    def _give_back(self, where: str) -> str:
        return _GIVE_BACK.format(rows=self._rows_to_change(f"SELECT i.id FROM invocations i WHERE i.status = 'running'{where}"))

    def queue_depth(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM invocations WHERE status = 'queued'")
            return int(cur.fetchone()[0])

    # -- tokens --------------------------------------------------------------------

    def create_token(self, record: TokenRecord) -> None:
        with self._tx() as cur:
            cur.execute(
                self._q(f"INSERT INTO tokens ({_TOKEN_COLS}) VALUES (?, ?, ?, ?, ?)"),
                (record.id, record.name, _encode(record.scopes).decode(), record.token_hash, record.created_at),
            )

    def get_token_by_hash(self, token_hash: str) -> TokenRecord | None:
        with self._read() as cur:
            cur.execute(self._q(f"SELECT {_TOKEN_COLS} FROM tokens WHERE token_hash = ?"), (token_hash,))
            row = cur.fetchone()
        return _token(row) if row else None

    def list_tokens(self) -> list[TokenRecord]:
        with self._read() as cur:
            cur.execute(f"SELECT {_TOKEN_COLS} FROM tokens ORDER BY created_at")
            return [_token(r) for r in cur.fetchall()]

    def delete_token(self, id: str) -> bool:
        with self._tx() as cur:
            cur.execute(self._q("DELETE FROM tokens WHERE id = ?"), (id,))
            return bool(cur.rowcount)

    def count_tokens(self) -> int:
        with self._read() as cur:
            cur.execute("SELECT COUNT(*) FROM tokens")
            return int(cur.fetchone()[0])


# -- row codec -----------------------------------------------------------------------


def _function(row: Sequence[Any]) -> FunctionRecord:
    name, version, digest, spec, created_at = row
    return FunctionRecord(
        name=name, version=int(version), digest=digest, spec=_spec_decoder.decode(spec), created_at=created_at
    )


def _filters(function: str | None, status: str | None) -> tuple[list[str], list[Any]]:
    """The WHERE terms (and their arguments) of an invocation listing's filters."""
    where, args = [], []
    for column, value in (("function", function), ("status", status)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    return where, args


def _chunks(records: Sequence[InvocationRecord]) -> Iterator[list[InvocationRecord]]:
    """``records`` in runs of at most ``_CHUNK`` rows and ``_CHUNK_BYTES`` (at least one row each)."""
    chunk: list[InvocationRecord] = []
    size = 0
    for r in records:
        n = len(r.payload) + len(r.output) + len(r.logs)
        if chunk and (len(chunk) == _CHUNK or size + n > _CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += n
    if chunk:
        yield chunk


_STATEMENT_ROOM = 2**20
"""Bytes of a statement besides its values (its text, each value's length), and then some."""


def _check_size(r: InvocationRecord, limit: int) -> None:
    """``RecordRefused`` if ``r``'s values, as sent (text as UTF-8), make a statement of more
    than ``limit`` bytes; only a record whose values may come near it (over ``limit``/8, counting
    characters: at most 6 bytes each in JSON) is encoded to tell."""
    texts = len(r.logs) + (len(r.error.message) + len(r.error.traceback) if r.error is not None else 0)
    if len(r.payload) + len(r.output) + texts <= limit // 8:
        return
    size = sum(len(v) if isinstance(v, bytes) else len(v.encode("utf-8", "replace")) if isinstance(v, str) else 8 for v in _row(r))
    if size + _STATEMENT_ROOM > limit:
        have, most = format_sizes(size, limit)
        raise RecordRefused(
            f"the store refused invocation {r.id}: its values are {have}; PostgreSQL takes at most {most} in one "
            "statement (its payload, result and logs together): lower max_payload and runtime.max_payload so "
            "that a payload and its result stay under it"
        )


def _invocations(records: Sequence[InvocationRecord]) -> str:
    """The records of a write, as a refusal names them."""
    return f"invocation {records[0].id}" if len(records) == 1 else f"one of {len(records)} invocations"


def _reason(exc: BaseException) -> str:
    """The first line of a driver's error, as text any store takes (it may quote the value refused)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line}".encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def _text(s: str) -> str:
    """Text a function wrote (its logs) as every store keeps it: PostgreSQL's text cannot
    hold U+0000, and one row it refuses fails the whole batch it is written in (for ever,
    as the batch is written again); a NUL is kept as U+FFFD, as undecodable output is."""
    return s.replace("\x00", "\ufffd") if "\x00" in s else s


def _row(r: InvocationRecord) -> tuple[Any, ...]:
    return (
        r.id, r.function, r.status, r.mode, r.content_type, r.payload, r.output, r.output_type,
        _encode(r.error).decode() if r.error is not None else None,
        _text(r.logs), r.attempts, r.idempotency_key, r.infra, r.created_at, r.started_at, r.finished_at,
        r.not_before, r.duration_ms, int(r.cold),
        _encode(r.event).decode() if r.event is not None else None, r.reruns, r.origin, r.reclaims,
        _encode(r.tried).decode(),
    )  # fmt: skip


def _invocation(row: Sequence[Any]) -> InvocationRecord:
    (id, function, status, mode, ct, payload, output, otype, error, logs, attempts, key, infra,
     created, started, finished, not_before, duration, cold, event, reruns, origin, reclaims, tried) = row  # fmt: skip
    return InvocationRecord(
        id=id,
        function=function,
        status=status,
        mode=mode,
        content_type=ct,
        payload=bytes(payload) if payload else b"",
        output=bytes(output) if output else b"",
        output_type=otype,
        error=_error_decoder.decode(error) if error else None,
        logs=logs,
        attempts=int(attempts),
        idempotency_key=key,
        infra=infra,
        created_at=created,
        started_at=started,
        finished_at=finished,
        not_before=not_before,
        duration_ms=duration,
        cold=bool(cold),
        event=_event_decoder.decode(event) if event else None,
        reruns=int(reruns),
        origin=origin or "",
        reclaims=int(reclaims),
        tried=_tried_decoder.decode(tried) if tried and tried != "[]" else [],
    )


def _token(row: Sequence[Any]) -> TokenRecord:
    id, name, scopes, token_hash, created_at = row
    return TokenRecord(
        id=id, name=name, scopes=_scopes_decoder.decode(scopes), token_hash=token_hash, created_at=created_at
    )

