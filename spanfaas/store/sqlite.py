"""The embedded store: one SQLite file in WAL mode, one connection per thread."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spanfaas.store.events import EventQueries
from spanfaas.store.images import ImageQueries
from spanfaas.store.sql import INV_COLS

__all__ = ["SQLiteStore"]

_CLAIM = (
    "UPDATE invocations SET status = 'running', attempts = attempts + 1, started_at = ?, "
    "lease_until = ?, owner = ? WHERE id IN (SELECT id FROM invocations WHERE status = 'queued' "
    "AND not_before <= ? ORDER BY not_before, created_at LIMIT ?) RETURNING "
)


class SQLiteStore(EventQueries, ImageQueries):
    """Thread-safe: each thread gets its own connection; writers take the
    database lock up front (``BEGIN IMMEDIATE``) and wait for it (busy_timeout)."""

    exclusive = True

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        conn = self._conn()
        conn.execute("PRAGMA journal_mode = WAL")
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
            # FULL: a commit is on disk before we answer (an accepted invocation survives power loss).
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn().cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        cur = self._conn().cursor()
        try:
            yield cur
        finally:
            cur.close()

    def _claim_sql(self) -> str:
        return _CLAIM + INV_COLS

    def close(self) -> None:
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
