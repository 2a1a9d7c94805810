"""The embedded store: one SQLite file in WAL mode, one connection per thread."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from spanfaas.errors import Conflict, InvalidRequest
from spanfaas.store.events import EventQueries
from spanfaas.store.images import ImageQueries
from spanfaas.store.sql import INV_COLS, SQLStore, StoreUnavailable

__all__ = ["SQLiteStore", "StoreInUse", "store_unavailable"]


class StoreInUse(Conflict):
    slug, title = "store-in-use", "Store in use"

_CLAIM = (
    "UPDATE invocations SET status = 'running', attempts = attempts + 1, started = 0, started_at = ?, "
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
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self._owner_fd: int | None = None
        try:
            with self._faults():
                self._conn().execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) != SQLITE_NOTADB:
                raise
            raise InvalidRequest(
                f"{self.path} is not a spanfaas store (SQLite: {exc}); move that file away, "
                "or pass another data directory (--data-dir, SPANFAAS_DATA_DIR)"
            ) from None
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError("the store is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                # FULL: a commit is on disk before we answer (an accepted invocation survives power loss).
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except BaseException:  # the file cannot be opened (its directory is gone): try again next time
                conn.close()
                raise
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _faults(self) -> Iterator[None]:
        """SQLite failing for a while (locked, disk full, I/O) as ``StoreUnavailable``; any
        other error as it is (a query that cannot work is a bug: a 500)."""
        try:
            yield
        except sqlite3.Error as exc:
            unavailable = store_unavailable(exc, self.path, self.busy_timeout)
            if unavailable is None:
                raise
            raise unavailable from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with self._faults():
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
        with self._faults():
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
        try:
            # The owner writes: find out now, not in the first write of its start (a traceback
            # once the runtime is up), whether it can (a read-only file opens, and reads, fine).
            with self._tx() as cur:
                cur.execute("UPDATE schema_version SET version = version")
        except BaseException:
            os.close(fd)
            raise
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


# Primary result codes (https://sqlite.org/rescode.html).  An error carries the extended
# code (SQLITE_IOERR_WRITE = SQLITE_IOERR | 3 << 8): its low byte is the primary one.
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN = 5, 6, 8, 10, 11, 13, 14
SQLITE_NOTADB = 26
RETRY_LOCKED = 1
"""Seconds a client waits before it tries again when another writer holds the lock (let go any moment) ..."""
RETRY_BROKEN = 10
"""... and when the disk or the file system fails (someone has to act first)."""


def store_unavailable(exc: sqlite3.Error, path: Path, busy_timeout: float) -> StoreUnavailable | None:
    """What ``exc`` means to the store's users when SQLite cannot do its work for now, decided
    by SQLite's result code, not by its message; None for any other error (a bug)."""
    code = getattr(exc, "sqlite_errorcode", None)  # only errors SQLite itself reported have one
    if code is None:
        return None
    primary = code & 0xFF
    why = f"{getattr(exc, 'sqlite_errorname', code)}: {exc}"
    if primary == SQLITE_BUSY:  # the busy timeout ran out
        return StoreUnavailable(
            f"the store's database {path} is locked by another process for longer than {busy_timeout:g} s "
            "(the busy timeout): a program such as a sqlite3 shell or a backup holds a write transaction; "
            "end it, then try again",
            retry_after=RETRY_LOCKED,
        )
    if primary == SQLITE_LOCKED:  # a conflict within this process (another connection's table lock)
        return StoreUnavailable(f"the store's database {path} is locked ({why}); try again", retry_after=RETRY_LOCKED)
    if primary == SQLITE_FULL:
        return StoreUnavailable(f"the store's disk is full ({path}): free space on it, then try again", retry_after=RETRY_BROKEN)
    if primary == SQLITE_IOERR:
        return StoreUnavailable(
            f"the store's database {path} could not be read or written ({why}); check its disk and "
            "file system (the kernel log says more), then try again",
            retry_after=RETRY_BROKEN,
        )
    if primary == SQLITE_CORRUPT:  # cut short or overwritten (a failing disk, a copy that stopped)
        return StoreUnavailable(
            f"the store's database {path} is damaged ({why}): stop the gateway, restore the file from a backup "
            f"(or save what it still holds: sqlite3 {path} .recover | sqlite3 NEW.db), then start again",
            retry_after=RETRY_BROKEN,
        )
    if primary == SQLITE_READONLY:
        return StoreUnavailable(
            f"the store's database {path} cannot be written ({why}): its file system is read-only, or the "
            "file or its directory is not writable by the gateway's user; make it writable, then try again",
            retry_after=RETRY_BROKEN,
        )
    if primary == SQLITE_CANTOPEN:
        return StoreUnavailable(
            f"cannot open the store's database {path} ({why}): check that its directory exists, that the "
            "gateway's user may write there, and that the gateway has file descriptors left",
            retry_after=RETRY_BROKEN,
        )
    return None
