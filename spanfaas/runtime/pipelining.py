"""How many invocations a reuse instance may hold: pipelining short calls.

A reuse instance runs ``resources.concurrency`` invocations at once (its
slots).  While a function's calls are short, an instance may also hold more,
waiting on its connection behind the ones it runs: the runtime writes them
back to back, the instance reads them with one ``recv`` and answers them in
one ``sendmsg``, so a batch costs one wake-up of each side instead of one per
call.  On a busy machine those wake-ups, not the calls, are what a no-op
costs.

How many: as many as the instance works off in ``BUDGET_MS`` at the calls'
average duration (at most ``DEPTH``), so a queued call waits about that long
at most, and calls of ``BUDGET_MS`` or more are not pipelined at all.  The
pool fills one instance before the next, so a burst gathers on one
connection.  The duration the instance reports is kept as an average that
rises at once on a slow call and falls slowly: one slow call stops
pipelining until fast calls are seen again; and nothing more queues on an
instance that has not answered for ``STALL`` seconds (a call that turned out
slow, before it reports).

A burst could still pile up on one instance before any of its calls
reports, and calls queued on an instance cannot move to the instances the
burst makes the pool start.  So each instance has a window, as TCP's slow
start: it may hold one call beyond its slots, one more for each short call
it answers, back to one after a long call or ``QUIET`` seconds without
work.  A steady stream of short calls opens it within a round trip or two;
a sudden burst of calls that turn out long finds it small.

Calls queued on connections count against ``scaling.queue`` like the ones
waiting in the pool.
"""

from __future__ import annotations

__all__ = ["BUDGET_MS", "DEPTH", "QUIET", "STALL", "Pipelining"]

BUDGET_MS = 2.0
"""Expected work (milliseconds) a call may queue behind on an instance."""
DEPTH = 64
"""Invocations that may wait on an instance's connection beyond its slots, at most."""
STALL = 0.01
"""Seconds without an answer after which no more calls queue on an instance."""
QUIET = 0.5
"""Seconds without work after which an instance's window starts small again."""
_FALL = 0.2
"""Weight of a new, shorter duration in the average (longer ones replace it)."""


class Pipelining:
    """The room per instance of one reuse pool: its slots, plus what short calls allow."""

    __slots__ = ("slots", "room", "call_ms")

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.room = slots
        """Invocations one instance may hold now (running + waiting on its connection)."""
        self.call_ms: float | None = None
        """The calls' duration average (ms); None until the first call answers."""

    def observe(self, ms: float) -> None:
        """One call took ``ms`` (the instance's own measure, or the timeout it ran into)."""
        avg = self.call_ms
        avg = ms if avg is None or ms >= avg else avg + _FALL * (ms - avg)
        self.call_ms = avg
        queue = DEPTH if avg * DEPTH <= BUDGET_MS * self.slots else int(BUDGET_MS * self.slots / avg)
        self.room = self.slots + queue
