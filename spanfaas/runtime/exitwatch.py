"""Whether a template has exited, told by its pidfd.

A template's exit reaches its pool twice, late and in either order: the
zygote reaps it and says so on its own socket, and the template's channel
reaches EOF.  A call whose instance was lost mid-run must know sooner
whether the instance went with its template (the platform's failure) or on
its own (the function's): the template's pidfd turns readable the moment it
exits.  It is opened at the first call lost mid-run, not with each template
(idle functions hold no more descriptors).
"""

from __future__ import annotations

import asyncio
import os
import select

__all__ = ["ExitWatch"]


class ExitWatch:
    """The exit of one template at a time; ``close`` when the template is gone."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pidfd = -1
        self._gone: asyncio.Future[None] | None = None
        """Done once the template has exited, told by its pidfd before the zygote's notice or its
        channel's EOF comes; watched from the first call lost mid-run until it goes."""

    def watch(self, pid: int, pidfd: int = -1) -> asyncio.Future[None] | None:
        """A future done once the template ``pid`` has exited; None when its state cannot be
        read.  With its ``pidfd`` (the zygote's, opened before it could reap it), a copy of
        that is watched.  Else its pid is its own until the zygote reaps it, and the zygote
        says so right after: gone by then (ESRCH), it counts as exited; taken by another
        process in that instant, it reads as alive, and the wait for news decides, as before."""
        if self._gone is None:
            if pid <= 0:
                return None
            gone: asyncio.Future[None] = self._loop.create_future()
            try:
                fd = os.dup(pidfd) if pidfd >= 0 else os.pidfd_open(pid)
            except ProcessLookupError:
                gone.set_result(None)  # reaped already: the zygote's notice is on its way
            except OSError:
                return None
            else:
                self._pidfd = fd
                self._loop.add_reader(fd, _exited, self._loop, fd, gone)
            self._gone = gone
        return self._gone

    def exited(self) -> bool:
        """Whether the watched template has exited, by now (its pidfd is read at once,
        not when the loop gets to it); False when none is watched."""
        gone, fd = self._gone, self._pidfd
        return gone is not None and (gone.done() or (fd >= 0 and bool(select.select([fd], [], [], 0)[0])))  # (readable: exited)

    def close(self) -> None:
        """The template is gone: whatever waits on its exit is told, and its pidfd closed."""
        if self._gone is not None:
            if not self._gone.done():
                self._gone.set_result(None)
            self._gone = None
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


def _exited(loop: asyncio.AbstractEventLoop, pidfd: int, gone: asyncio.Future[None]) -> None:
    """A template's pidfd turned readable: it exited."""
    loop.remove_reader(pidfd)
    if not gone.done():
        gone.set_result(None)
