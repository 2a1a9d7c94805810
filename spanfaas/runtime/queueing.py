"""A pool's queue: invocations waiting for room on an instance, and backpressure.

An instance has room for its slots (one in ``strict`` isolation,
``resources.concurrency`` in ``reuse``), and while calls are short for a few
more waiting on its connection (runtime/pipelining.py).  Instances with room
are parked (``idle``); an invocation takes room on the first of them, or
waits (``waiters``, in order) until an instance offers some.  Calls waiting
here and calls queued on connections together are at most ``scaling.queue``:
beyond that a call is refused (TooManyRequests) unless it was accepted
before.  Deadlines are on the loop's clock: a call whose deadline passes
while it waits is told ``Expired``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from spanfaas.errors import TooManyRequests, plural
from spanfaas.runtime.handle import Instance
from spanfaas.runtime.pipelining import QUIET, STALL, Pipelining

__all__ = ["Expired", "Queue", "Waiter", "expire"]


class Expired(Exception):
    """A deadline passed while an invocation waited (for an instance or a reply)."""


def expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(Expired())


class Waiter(asyncio.Future[Instance]):
    """An invocation waiting for an instance, and when it expires (loop clock)."""

    __slots__ = ("expires",)

    def __init__(self, loop: asyncio.AbstractEventLoop, expires: float) -> None:
        super().__init__(loop=loop)
        self.expires = expires


class Queue:
    """The waiting invocations and the parked instances of one pool."""

    def __init__(self, name: str, slots: int, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        self.name = name
        self.slots = slots
        """Invocations one instance serves at once."""
        self.limit = limit
        """``scaling.queue``: invocations that may wait, here and on connections."""
        self._loop = loop
        self.pipelining = Pipelining(slots)
        """reuse: how many invocations an instance may hold (its slots, more while calls are short)."""
        self.idle: deque[Instance] = deque()
        """Instances with room, in the order they take calls."""
        self.waiters: deque[Waiter] = deque()
        self.pipelined = 0
        """Invocations queued on instance connections behind the ones running (beyond the slots)."""

    @property
    def waiting(self) -> int:
        """Invocations waiting: for an instance, or on an instance's connection."""
        return len(self.waiters) + self.pipelined

    def admit(self, accepted: bool) -> None:
        """Refuse a call (TooManyRequests) when the queue is full, unless ``accepted`` before."""
        waiting = len(self.waiters) + self.pipelined
        if waiting >= self.limit and not accepted:
            raise TooManyRequests(
                f"function '{self.name}' has {plural(waiting, 'invocation')} waiting "
                f"(scaling.queue = {self.limit}); retry later or raise scaling.max",
                retry_after=1,
            )

    def fail(self, exc: BaseException | type[BaseException]) -> None:
        """Tell every waiting invocation ``exc``: no instance will come for it."""
        for w in self.waiters:
            if not w.done():
                w.set_exception(exc)
        self.waiters.clear()

    def fail_one(self, exc: BaseException) -> None:
        """Tell the first waiting invocation ``exc`` (others may still get an instance)."""
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_exception(exc)
                break

    def offer(self, inst: Instance, fresh: bool = False) -> None:
        """Give an instance's room to waiters; park it if room remains (a fresh
        multi-slot instance first in line, so new calls spread to it at once)."""
        room = self.pipelining.room
        while self.waiters and inst.active < room:
            w = self.waiters[0]
            if w.done():
                self.waiters.popleft()
                continue
            if not self.hand(inst, w.expires):
                break
            self.waiters.popleft()
            w.set_result(inst)
        if inst.active < room and inst not in self.idle:
            if fresh and self.slots > 1:
                self.idle.appendleft(inst)
            else:
                self.idle.append(inst)

    def give_back(self, inst: Instance) -> None:
        """An instance slot was handed out but not used: offer it again (a strict
        child that served nothing is still fresh)."""
        if inst.conn is not None and not inst.conn.lost and not inst.timed_out and not inst.retired:
            self.offer(inst)

    def unpark(self, inst: Instance) -> None:
        """``inst`` takes no more calls (lost, stopped, retired)."""
        try:
            self.idle.remove(inst)
        except ValueError:
            pass

    def take(self, expires: float) -> Instance | None:
        """Room on a ready instance, if there is some (no waiting).

        The first parked instance takes calls until it is full, so pipelined
        calls gather on one connection (one write, one wake-up for the lot)."""
        room = self.pipelining.room
        idle = self.idle
        refused = 0
        while refused < len(idle):
            inst = idle[0]
            if inst.conn is None or inst.conn.lost or inst.timed_out or inst.retired or inst.active >= room:
                idle.popleft()
                continue
            if not self.hand(inst, expires):
                idle.rotate(-1)  # busy and should not queue more: try the others
                refused += 1
                continue
            if inst.active >= room:
                idle.popleft()
            return inst
        return None

    def hand(self, inst: Instance, expires: float) -> bool:
        """Count a call expiring at ``expires`` on ``inst``; False if it should not
        queue there behind the calls it runs (runtime/pipelining.py): the queue is
        full, the instance has not answered for a while, or a call ahead expires
        later (an expiry kills the instance and whatever it runs, which must never
        be a call with time left: its own expiry came first)."""
        if inst.active >= self.slots:
            if (
                inst.active - self.slots >= inst.window
                or expires < inst.expires
                or self.pipelined + len(self.waiters) >= self.limit
                or self._loop.time() - inst.answered > STALL
            ):
                return False
            self.pipelined += 1
        elif inst.active == 0:
            now = self._loop.time()
            if now - inst.answered > QUIET:
                inst.window = 1  # what it answered before a quiet spell says little about the next burst
            inst.answered = now
        inst.active += 1
        if expires > inst.expires:
            inst.expires = expires
        return True

    def release(self, inst: Instance) -> None:
        """A call handed to ``inst`` ended (or was never sent)."""
        if inst.active > self.slots:
            self.pipelined -= 1
        inst.active -= 1
        if inst.gone and inst.active == 0:
            inst.close_capture()  # (kept for the call that ran when it was lost)
