"""How many invocations a reuse instance may hold: pipelining short calls.

A reuse instance runs ``resources.concurrency`` invocations at once (its
slots).  While a function's calls are short, an instance may also hold up
to ``DEPTH`` more, waiting on its connection behind the ones it runs: the
runtime writes them back to back, the instance reads them with one
``recv`` and answers them in one ``sendmsg``, so a batch costs one wake-up
of each side instead of one per call.  On a busy machine those wake-ups,
not the calls, are what a no-op costs.

Only short calls are pipelined: a call queued behind a long one would wait
while another instance may be free.  The duration the instance reports is
kept as an average that rises at once on a slow call and falls slowly, so
one slow call stops pipelining until fast calls are seen again; and nothing
more queues on an instance that has not answered for ``STALL`` seconds (a
call that turned out slow, before it reports).  Calls queued on connections
count against ``scaling.queue`` like the ones waiting in the pool.
"""

from __future__ import annotations

__all__ = ["DEPTH", "MAX_MS", "STALL", "Pipelining"]

DEPTH = 8
"""Invocations that may wait on an instance's connection beyond its slots."""
MAX_MS = 0.5
"""Pipeline only while the calls' duration average is below this (milliseconds)."""
STALL = 0.01
"""Seconds without an answer after which no more calls queue on an instance."""
_FALL = 0.2
"""Weight of a new, shorter duration in the average (longer ones replace it)."""


class Pipelining:
    """The room per instance of one reuse pool: its slots, plus ``DEPTH`` while calls are short."""

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
        self.room = self.slots + DEPTH if avg < MAX_MS else self.slots
