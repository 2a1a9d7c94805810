"""Predictive warm-up: when will a function be called next, and is it worth a template now?

Pure, like ``scaling``: the runtime tells it when each function was called
and which functions are cold; it answers which to start now and for how long
to keep them.

Each function has an :class:`ArrivalHistogram` of the gaps between its
invocations (log-spaced buckets, older gaps fading).  When a function has
been called at least ``MIN_SAMPLES`` times and its gaps are regular (the
10th–90th percentile window is narrow, see :meth:`Predictor.window`), the
next call is expected in ``[last + q10, last + q90]``.  A cold function is
started ``lead`` seconds before that window opens (its start-up time plus a
tick) and held until the window closes; a call in the window finds it warm.
A hold that ends without a call is a wasted prewarm.

Every prewarm costs memory while held: a template and one instance, each
counted at ``resources.memory``.  The held total never passes the budget
(``runtime.predict_budget`` MiB); the functions expected soonest go first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from msgspec import Struct

__all__ = ["ArrivalHistogram", "Candidate", "Plan", "Predictor"]

MIN_SAMPLES = 3
"""Gaps seen before a function's next call is predicted."""
BASE = 0.01
"""The smallest gap bucket, in seconds; the histogram spans 10 ms .. ~12 days."""
PER_OCTAVE = 4
BUCKETS = 30 * PER_OCTAVE
DECAY_AT = 64
"""Past this many gaps, every count halves: the histogram follows a changing rhythm."""
MAX_SPREAD = 5.0
"""A window wider than both its opening gap and this many seconds is not regular enough to act on."""
GRACE = 0.5
"""Seconds a predictive prewarm is held past its window."""


class ArrivalHistogram:
    """Inter-arrival gaps of one function in log-spaced buckets."""

    __slots__ = ("counts", "last", "total")

    def __init__(self) -> None:
        self.counts = [0.0] * BUCKETS
        self.total = 0.0
        self.last: float | None = None

    @staticmethod
    def bucket(gap: float) -> int:
        if gap <= BASE:
            return 0
        return min(BUCKETS - 1, int(math.log2(gap / BASE) * PER_OCTAVE) + 1)

    @staticmethod
    def edge(i: int) -> float:
        """The upper edge of bucket ``i`` in seconds."""
        return float(BASE * 2.0 ** (i / PER_OCTAVE))

    def arrived(self, now: float) -> None:
        if self.last is not None:
            self.add(now - self.last)
        self.last = now

    def add(self, gap: float) -> None:
        self.counts[self.bucket(gap)] += 1.0
        self.total += 1.0
        if self.total > DECAY_AT:
            self.counts = [c / 2 for c in self.counts]
            self.total /= 2

    def quantile(self, q: float) -> float:
        """The gap below which a fraction ``q`` of the gaps fall (a bucket's edge)."""
        if self.total <= 0:
            raise ValueError("no gaps recorded")
        need = q * self.total
        seen = 0.0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= need - 1e-9 and c > 0:
                return self.edge(i)
        return self.edge(BUCKETS - 1)

    def lower(self, q: float) -> float:
        """The lower edge of the bucket holding quantile ``q``."""
        hi = self.quantile(q)
        return 0.0 if hi <= BASE else hi / 2.0 ** (1 / PER_OCTAVE)


class Candidate(Struct, frozen=True):
    """A cold function the runtime could start now."""

    name: str
    memory_mib: int
    """What holding it warm costs (template + one instance)."""
    lead: float
    """Seconds its start takes, plus the runtime's tick."""


class Plan(Struct, frozen=True):
    name: str
    until: float
    """Hold it warm until then; past it without a call, the prewarm was wasted."""
    memory_mib: int


class Predictor:
    """Inter-arrival histograms per function and the prewarm plan they imply; see the module doc."""

    def __init__(self, budget_mib: int) -> None:
        self.budget_mib = budget_mib
        self.histograms: dict[str, ArrivalHistogram] = {}

    def arrived(self, name: str, now: float) -> None:
        h = self.histograms.get(name)
        if h is None:
            h = self.histograms[name] = ArrivalHistogram()
        h.arrived(now)

    def forget(self, name: str) -> None:
        self.histograms.pop(name, None)

    def window(self, name: str) -> tuple[float, float] | None:
        """The expected next call, as absolute times ``(opens, closes)``; None if not predictable."""
        h = self.histograms.get(name)
        if h is None or h.last is None or h.total < MIN_SAMPLES:
            return None
        lo, hi = h.lower(0.1), h.quantile(0.9)
        if hi - lo > max(lo, MAX_SPREAD):
            return None
        return h.last + lo, h.last + hi

    def plan(self, now: float, cold: Iterable[Candidate], held_mib: int) -> list[Plan]:
        """Which cold functions to start now, soonest expected first, within the memory budget."""
        due: list[tuple[float, Candidate, float]] = []
        for c in cold:
            w = self.window(c.name)
            if w is None:
                continue
            opens, closes = w
            if opens - c.lead <= now < closes:
                due.append((opens, c, closes + GRACE))
        due.sort(key=lambda t: t[0])
        out = []
        for _opens, c, until in due:
            if held_mib + c.memory_mib > self.budget_mib:
                continue
            held_mib += c.memory_mib
            out.append(Plan(c.name, until, c.memory_mib))
        return out
