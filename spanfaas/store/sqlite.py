"""The embedded store: one SQLite file in WAL mode, one connection per thread."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spanfaas.errors import Conflict
from spanfaas.store.events import EventQueries
from spanfaas.store.images import ImageQueries
from spanfaas.store.sql import INV_COLS, SQLStore

__all__ = ["SQLiteStore", "StoreInUse"]


class StoreInUse(Conflict):
    slug, title = "store-in-use", "Store in use"

_CLAIM = (
    "UPDATE invocations SET status = 'running', attempts = attempts + 1, started_at = ?, "
    "lease_until = ?, owner = ? WHERE id IN (SELECT id FROM invocations WHERE status = 'queued' "
    "AND not_before <= ? ORDER BY not_before, created_at LIMIT ?) RETURNING "
)


class SQLiteStore(EventQueries, ImageQueries):
    """Thread-safe: each thread gets its own connection; writers take the
    database lock up front (``BEGIN IMMEDIATE``) and wait for it (busy_timeout)."""

    exclusive = True
    # Not OperationalError: a locked database, a full disk, an I/O error are the store failing.
    _refused = (*SQLStore._refused, sqlite3.IntegrityError, sqlite3.DataError)

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._owner_fd: int | None = None
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
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (a full disk): SQLite may keep the transaction,
            # and with it the write lock, open on this thread's connection.
            if conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
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

    def take_ownership(self) -> None:
        """Hold ``<db>.owner`` (flock, with our pid) until close: one gateway per data dir.

        The kernel lets go of the lock when the process dies, so a gateway
        restarted after a crash takes over at once."""
        if self._owner_fd is not None:
            return
        fd = os.open(self.path.with_name(self.path.name + ".owner"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreInUse(
                f"another gateway (pid {pid}) is serving the data dir {self.path.parent}; "
                "stop it first, or give this one its own data dir (--data-dir, SPANFAAS_DATA_DIR)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._owner_fd = fd

    def requeue_running(self) -> int:
        self.take_ownership()  # the records are ours to take back only if no other gateway runs them
        return super().requeue_running()

    def close(self) -> None:
        self._closed = True
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
