"""SQLite faults made by a real second writer, for the store's fault tests."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Another process's writer holding the database's write lock (a sqlite3 shell, a
    backup): a store write past its busy timeout fails (the gateway answers 503)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()
