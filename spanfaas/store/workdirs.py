"""Work directories that show whether their maker still lives.

An image build or a bundle unpack happens in ``<parent>/.tmp-<random>``; the
result is renamed into place only when it is whole.  A crash leaves the
directory behind, and every process sharing ``<parent>`` cleans such leftovers
when it starts.  Which are leftovers?  A pid in the name cannot tell: a
process in another pid namespace (a container, a sandboxed gateway) looks dead
and its build in progress would be deleted under it, and a reused pid makes a
crash's leftover look alive.  So the maker holds an ``flock`` on
``<parent>/.tmp-<random>.lock`` from before the directory exists until it is
done, and a directory whose lock nobody holds is a leftover: the kernel drops a
lock when its holder dies, whatever namespace it ran in.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
from pathlib import Path
from types import TracebackType

__all__ = ["WorkDir", "clean_stale", "make"]

PREFIX = ".tmp-"
_LOCK = ".lock"


class WorkDir:
    """A fresh directory, held until ``close()`` (which removes what is still there)."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    def close(self) -> None:
        """Remove the directory if it was not renamed away, then let go of it."""
        if self._lock_fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_lock_path(self.path))
        os.close(self._lock_fd)  # the flock goes with the last descriptor
        self._lock_fd = -1

    def __enter__(self) -> WorkDir:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WorkDir({str(self.path)!r})"


def make(parent: Path, *, mode: int = 0o755, tag: str = "") -> WorkDir:
    """A new work directory under ``parent`` (created if needed), mode ``mode``
    (umask aside: functions may run as another uid and read it)."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        name = f"{PREFIX}{tag}{secrets.token_hex(6)}"
        lock = parent / (name + _LOCK)
        try:  # the lock first: a directory is never seen unheld while its maker lives
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A cleaner that found the lock file without its directory (before our
        # flock) may have unlinked it: then hold a fresh one.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    path = parent / name
    try:
        path.mkdir(mode=mode)
        path.chmod(mode)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(parent / (name + _LOCK))
        os.close(fd)
        raise
    return WorkDir(path, fd)


def clean_stale(parent: Path) -> int:
    """Remove the work directories under ``parent`` that nobody holds (a crash's,
    or from before these locks); returns how many.  Held ones are left alone."""
    if not parent.is_dir():
        return 0
    removed = 0
    for entry in parent.glob(PREFIX + "*"):
        if entry.name.endswith(_LOCK):
            if not entry.with_name(entry.name[: -len(_LOCK)]).exists():
                _drop_lock_if_free(entry)  # its directory is gone: a crash between the two
            continue
        if not entry.is_dir():
            continue
        lock = _lock_path(entry)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:  # never locked (or its maker just finished): nobody holds it
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its maker is at work
            shutil.rmtree(entry, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
            removed += 1
        finally:
            os.close(fd)
    return removed


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + _LOCK)


def _drop_lock_if_free(lock: Path) -> None:
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # made an instant ago, its directory not yet
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
    finally:
        os.close(fd)
