"""SQLite that cannot do its work for now is ``StoreUnavailable`` (503, Retry-After), told
apart from a bug by SQLite's result code: each fault made for real where SQLite can be
made to report it (another writer's lock, a database at its size limit, a read-only
connection, a directory gone), and the classification of the rest by their codes."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spanfaas.model import InvocationRecord
from spanfaas.store import SQLiteStore, StoreUnavailable
from spanfaas.store.sqlite import store_unavailable


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "db" / "spanfaas.db", busy_timeout=0.1)
    yield s
    s.close()


def inv(payload: bytes = b"{}") -> InvocationRecord:
    return InvocationRecord(id=uuid.uuid4().hex, function="hello", status="queued", mode="async",
                            payload=payload, created_at=time.time())  # fmt: skip


def unavailable(call: Callable[[], object]) -> StoreUnavailable:
    with pytest.raises(StoreUnavailable) as caught:
        call()
    assert caught.value.status == 503 and isinstance(caught.value.__cause__, sqlite3.OperationalError)
    return caught.value


def test_a_write_lock_held_past_the_busy_timeout(store: SQLiteStore) -> None:
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        err = unavailable(lambda: store.enqueue(inv()))
        assert time.monotonic() - t0 >= 0.1  # it waited for the lock first
        assert f"{store.path} is locked by another process for longer than 0.1 s" in err.message
        assert err.extra["retry_after"] == 1
        assert store.queue_depth() == 0  # reads go on meanwhile (WAL)
    finally:
        other.rollback()
        other.close()
    store.enqueue(inv())  # the lock is back, and no transaction was left open on this connection
    assert store.queue_depth() == 1


def test_a_full_database(store: SQLiteStore) -> None:
    conn = store._conn()  # this thread's: the cap is a setting of each connection
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
    err = unavailable(lambda: store.enqueue(inv(b"x" * 100_000)))
    assert err.message == f"the store's disk is full ({store.path}): free space on it, then try again"
    assert not conn.in_transaction
    conn.execute("PRAGMA max_page_count = 1073741823")
    store.enqueue(inv(b"x" * 100_000))
    assert store.queue_depth() == 1


def test_a_read_only_database(store: SQLiteStore) -> None:
    store._conn().execute("PRAGMA query_only = ON")  # as a read-only file system answers a write
    err = unavailable(lambda: store.enqueue(inv()))
    assert "cannot be written (SQLITE_READONLY: attempt to write a readonly database)" in err.message
    assert "make it writable" in err.message


def test_a_database_that_cannot_be_opened(store: SQLiteStore) -> None:
    """A thread's first call opens its own connection: here the data dir is gone."""
    shutil.rmtree(store.path.parent)
    caught: list[BaseException] = []
    thread = threading.Thread(target=lambda: caught.append(pytest.raises(StoreUnavailable, store.queue_depth).value))
    thread.start()
    thread.join()
    assert len(caught) == 1 and f"cannot open the store's database {store.path}" in str(caught[0])


def _error(cls: type[sqlite3.Error], message: str, code: int | None, name: str = "") -> sqlite3.Error:
    """An error as SQLite reports it: for the faults no test can make (a disk that fails)."""
    exc = cls(message)
    if code is not None:
        exc.sqlite_errorcode, exc.sqlite_errorname = code, name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (_error(sqlite3.OperationalError, "disk I/O error", 778, "SQLITE_IOERR_WRITE"),
         "could not be read or written (SQLITE_IOERR_WRITE: disk I/O error)"),
        (_error(sqlite3.OperationalError, "database is locked", 517, "SQLITE_BUSY_SNAPSHOT"), "is locked by another process"),
        (_error(sqlite3.OperationalError, "database table is locked", 6, "SQLITE_LOCKED"), "is locked (SQLITE_LOCKED"),
    ],
)  # fmt: skip
def test_faults_are_told_by_their_extended_codes(exc: sqlite3.Error, words: str) -> None:
    err = store_unavailable(exc, Path("/data/spanfaas.db"), 30.0)
    assert err is not None and words in err.message


@pytest.mark.parametrize(
    "exc",
    [
        _error(sqlite3.OperationalError, 'near "SELEC": syntax error', 1, "SQLITE_ERROR"),  # a bug
        _error(sqlite3.IntegrityError, "database or disk is full", 1811, "SQLITE_CONSTRAINT_TRIGGER"),  # words lie
        _error(sqlite3.ProgrammingError, "Cannot operate on a closed database.", None),  # not SQLite's: no code
    ],
)
def test_other_errors_are_not_the_store_being_unavailable(exc: sqlite3.Error) -> None:
    assert store_unavailable(exc, Path("/data/spanfaas.db"), 30.0) is None


def test_a_file_that_is_no_database_is_named_with_what_to_do(tmp_path: Path) -> None:
    """It was sqlite3's 'DatabaseError: file is not a database', a traceback from `spanfaas up`."""
    from spanfaas.errors import InvalidRequest

    path = tmp_path / "spanfaas.db"
    path.write_bytes(b"notes someone kept here, not a database " * 20)
    with pytest.raises(InvalidRequest) as caught:
        SQLiteStore(path)
    assert caught.value.message == (
        f"{path} is not a spanfaas store (SQLite: file is not a database); move that file away, "
        "or pass another data directory (--data-dir, SPANFAAS_DATA_DIR)"
    )
    assert path.read_bytes().startswith(b"notes someone kept")  # left as it was
