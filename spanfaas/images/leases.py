"""Uses of images across processes: one lock file per image, shared by every
process using the image, taken alone by whoever removes it.

Several gateways may share one image directory (``[images] dir``), with one
store or with stores of their own, so no store knows every use.  The lock
files do::

    <images>/.locks/<id>.use    flock(LOCK_SH): a process deploys, builds or runs
                                functions on the image (a *lease*);
                                flock(LOCK_EX | LOCK_NB): gc or rm, while it takes
                                the image out of place, only when nobody holds a lease

A process holds one shared lock per image however many uses it has (they are
counted here), taken *before* it looks for the image, so a removal cannot come
between finding an image and using it.  Whoever asks for a lease while a
removal holds the lock waits the removal out and then finds the image gone.

The kernel drops a process's locks when it exits, however it exits: a gateway
that dies (SIGKILL, out of memory) leaves no lease behind, and there is nothing
to expire or to clean up; one that hangs keeps its leases, as it may still run
its functions.  The lock files stay (empty): deleting one while another process
opens it would give two processes two different locks.  The descriptors are
close-on-exec: uv and the zygotes the runtime starts inherit none of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Leases"]


class Leases:
    """This process's leases on the images under one directory; thread-safe."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self._held: dict[str, tuple[int, int]] = {}
        """Image id -> (the descriptor holding the shared lock, uses counted on it)."""
        self._mutex = threading.Lock()

    def _open(self, id: str) -> int:
        return os.open(self.dir / f"{id}.use", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def try_hold(self, id: str) -> bool:
        """One more use of image ``id``; False (nothing held) while a removal has it.
        Never blocks: a caller that gets False waits a moment and asks again."""
        with self._mutex:
            held = self._held.get(id)
            if held is not None:
                self._held[id] = (held[0], held[1] + 1)
                return True
            fd = self._open(id)
            if not _lock(fd, fcntl.LOCK_SH):
                os.close(fd)
                return False
            self._held[id] = (fd, 1)
            return True

    def release(self, id: str) -> None:
        """One use of ``id`` ended; the last one lets go of the lock."""
        with self._mutex:
            fd, uses = self._held[id]
            if uses > 1:
                self._held[id] = (fd, uses - 1)
                return
            del self._held[id]
        os.close(fd)  # closing the only descriptor releases the lock

    def held(self, id: str) -> bool:
        """Does this process use image ``id``?"""
        return id in self._held

    @contextlib.contextmanager
    def removal(self, id: str) -> Iterator[bool]:
        """For removing image ``id``: True, and no process can take a lease until the
        block ends, when no process (this one included) holds one; False otherwise."""
        fd = self._open(id)
        try:
            yield _lock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Let go of every lease (the process stops using the images)."""
        with self._mutex:
            fds = [fd for fd, _ in self._held.values()]
            self._held.clear()
        for fd in fds:
            os.close(fd)


def _lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
