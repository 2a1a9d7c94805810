"""The shared store: PostgreSQL through psycopg 3 and a small connection pool.

Several gateways may share one database: versions are serialized with an
advisory lock per function name, and the queue is claimed with
``SELECT … FOR UPDATE SKIP LOCKED`` so two dispatchers never take one record.
A change to the functions is announced to every gateway as it commits
(``NOTIFY spanfaas_functions``, see ``function_changes``).
"""

from __future__ import annotations

import queue
import select
import threading
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg

from spanfaas.errors import InvalidRequest
from spanfaas.store.events import EventQueries
from spanfaas.store.images import ImageQueries
from spanfaas.store.sql import INV_COLS, SQLStore, StoreUnavailable

__all__ = ["PostgresStore"]

_CLAIM = (
    "WITH due AS (SELECT id FROM invocations WHERE status = 'queued' AND not_before <= ? "
    "ORDER BY not_before, created_at LIMIT ? FOR UPDATE SKIP LOCKED) "
    "UPDATE invocations SET status = 'running', attempts = attempts + 1, started = 0, started_at = ?, "
    "lease_until = ?, owner = ? FROM due WHERE invocations.id = due.id RETURNING "
)


RETRY_AFTER = 2
"""Seconds a client waits before it tries again when the server is unreachable (a restart)."""

CHANNEL = "spanfaas_{}"
"""The NOTIFY channel of a row of ``generations``: ``spanfaas_functions``."""


@lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresStore(EventQueries, ImageQueries):
    exclusive = False
    _real = "DOUBLE PRECISION"
    _blob = "BYTEA"
    # Not OperationalError (a lost connection, a restart: ``InfraUnavailable``, see _conn),
    # except a value over one of the server's limits (SQLSTATE class 54: an index row, an array).
    _refused = (*SQLStore._refused, psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)
    _max_values = 2**30
    """The largest message the server reads (``PQ_LARGE_MESSAGE_LIMIT``, 1 GiB less 2 bytes): it ends
    the connection on a longer one, saying why only in its own log."""

    def __init__(self, url: str, *, pool_size: int = 8, connect_timeout: float = 10.0) -> None:
        self.url = url
        self._timeout = connect_timeout
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False
        self._migrate()

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._timeout))
        except psycopg.OperationalError as exc:
            why = " ".join(str(exc).split())  # libpq's message has a second, tab-indented line: keep one
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store ({_redact(self.url)}): {why}; "
                "check SPANFAAS_STORE and that the server is up",
                retry_after=RETRY_AFTER,
            ) from None
        except psycopg.ProgrammingError:  # libpq could not parse it (its message quotes the URL, password too)
            raise InvalidRequest(
                f"SPANFAAS_STORE ({_redact(self.url)}) is not a PostgreSQL URL libpq can read; "
                "write postgresql://USER:PASSWORD@HOST:PORT/DATABASE (an IPv6 host in [brackets])"
            ) from None

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        if self._closed:
            raise RuntimeError("the store is closed")
        self._slots.acquire()
        try:
            conn = self._checkout()
            try:
                yield conn
            except psycopg.errors.ProgramLimitExceeded:
                raise  # a value over a limit of the server's (RecordRefused): it did not fail
            except psycopg.OperationalError as exc:
                conn.close()  # broken: do not return it to the pool
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StoreUnavailable(
                    f"the PostgreSQL store ({_redact(self.url)}) failed: {reason}; try again "
                    "(a server that restarts is used again as soon as it is back)",
                    retry_after=RETRY_AFTER,
                ) from exc
            finally:  # also when the caller raised (its transaction was rolled back)
                if conn.closed:
                    pass
                elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()
                elif self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
        finally:
            self._slots.release()

    def _checkout(self) -> psycopg.Connection[Any]:
        """An idle connection of the pool that the server has not ended, or a new one."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return self._connect()
            if not conn.closed and not _dropped(conn):
                return conn
            conn.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._conn() as conn, conn.transaction(), conn.cursor() as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[psycopg.Cursor[Any]]:
        with self._conn() as conn, conn.cursor() as cur:
            yield cur

    def _q(self, sql: str) -> str:
        return _pg(sql)

    def _refuses(self, exc: Exception) -> bool:
        # A value the server would need more than 1 GiB of memory for: an internal error
        # (XX000, as every failed allocation is) told apart by its text alone.
        return super()._refuses(exc) or (
            isinstance(exc, psycopg.errors.InternalError_) and str(exc).startswith("invalid memory alloc request size")
        )

    def _rows(self, cur: Any, sql: str, args: Sequence[Any]) -> None:
        cur.execute(sql, args, binary=True)

    def _rows_to_change(self, select: str) -> str:
        # The ids as an array, found (and locked) first: the UPDATE then reads each row by its
        # id.  Joined to the SELECT (``id IN (…)``), the rows it changes were read by a hash
        # join over a sequential scan of the table, from a few hundred ids on (bench/store_marks.py).
        return f"id = ANY(ARRAY({select} ORDER BY i.id FOR UPDATE OF i))"

    def _marks(self, marks: Sequence[tuple[str, str]], started: bool = True) -> tuple[str, list[Any]]:
        # The ids listed again, as such, beside their join to the marks: joined to the marks
        # alone, the rows were read by a scan of every running row (or of the table), from some
        # hundred marks a statement on, not by their ids.  (SQLite looks each up either way.)
        values = ", ".join(["(%s, %s)"] * len(marks))
        ids = ", ".join(["%s"] * len(marks))
        select = (f"SELECT i.id FROM invocations i JOIN m ON i.id = m.id AND i.owner = m.owner "
                  f"WHERE i.status = 'running' AND i.id IN ({ids})")  # fmt: skip
        return (
            f"WITH m(id, owner) AS (VALUES {values}) UPDATE invocations SET started = {int(started)} WHERE {self._rows_to_change(select)}",
            [*(v for pair in marks for v in pair), *(id for id, _ in marks)],
        )

    def _lock(self, cur: Any, key: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

    def _changed(self, cur: Any, what: str) -> None:
        super()._changed(cur, what)
        cur.execute("SELECT pg_notify(%s, '')", (CHANNEL.format(what),))  # sent when the transaction commits

    async def function_changes(self) -> AsyncGenerator[None, None]:
        """See ``AnnouncesChanges``: on a connection of its own, outside the pool."""
        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=int(self._timeout))
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot listen on the PostgreSQL store ({_redact(self.url)}): {exc}", retry_after=RETRY_AFTER
            ) from None
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL.format('functions')}")
            yield
            async for _ in conn.notifies():
                yield

    def get_blob(self, digest: str) -> bytes | None:
        with self._read() as cur:  # binary: a bytea as text would be hex, twice its size on the wire
            self._rows(cur, _pg("SELECT data FROM blobs WHERE digest = ?"), (digest,))
            row = cur.fetchone()
        return bytes(row[0]) if row is not None else None

    def _claim_sql(self) -> str:
        return _CLAIM + ", ".join(f"invocations.{c.strip()}" for c in INV_COLS.split(","))

    def _claim_args(self, now: float, lease: float, limit: int, owner: str) -> tuple[Any, ...]:
        return (now, int(limit), now, now + lease, owner)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break

    def __repr__(self) -> str:
        return f"PostgresStore({_redact(self.url)!r})"


def _dropped(conn: psycopg.Connection[Any]) -> bool:
    """The server ended this idle connection (a restart, ``pg_terminate_backend``, an idle
    timeout): it sent its error and closed, where an idle connection hears nothing.  One
    poll, no round trip; a connection dropped without a word is found by its next query."""
    try:
        poller = select.poll()  # not select(): a gateway may hold more than FD_SETSIZE descriptors
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _redact(url: str) -> str:
    """Hide a password in a connection URL."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
