"""A circuit breaker per infrastructure.

::

    closed ──N consecutive failures──▶ open ──open_for elapsed──▶ half-open
       ▲                                ▲                            │ one probe
       └──────────── probe succeeds ────┼────────────────────────────┤
                                        └── probe fails (open_for ×2)┘

While open, the scheduler leaves the infrastructure out of its ranking, so
invocations go straight to the next one instead of waiting for a timeout.
A background refresh that finds the infrastructure down opens it at once
(``trip``); it closes only after a probe invocation succeeded.
Time comes from the caller (``now``), which keeps the breaker pure and
testable.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["Breaker", "State"]

State = Literal["closed", "open", "half-open"]


class Breaker:
    __slots__ = ("threshold", "base", "cap", "state", "failures", "open_for", "opened_at", "probe_at", "opened", "closed", "tripped")

    def __init__(self, threshold: int = 3, open_for: float = 1.0, max_open_for: float = 30.0) -> None:
        self.threshold = threshold
        self.base = open_for
        self.cap = max_open_for
        self.state: State = "closed"
        self.failures = 0
        """Consecutive failures."""
        self.open_for = open_for
        self.opened_at = 0.0
        self.probe_at = 0.0
        self.opened = 0
        """Times it opened (from closed), for metrics and tests."""
        self.closed = 0
        """Times it closed again after being open."""
        self.tripped = False
        """Open because the refresh found the infrastructure down (not after failed calls)."""

    def allow(self, now: float) -> bool:
        """May an invocation go there now?  Lets one probe through once open_for has passed."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self.opened_at < self.open_for:
                return False
            self.state = "half-open"
            self.probe_at = now
            return True
        # half-open: one probe at a time; a probe that never answered does not block forever
        if self._probe_stale(now):
            self.probe_at = now
            return True
        return False

    def would_allow(self, now: float) -> bool:
        """``allow`` without taking the probe slot (for ranking and ``explain``)."""
        if self.state == "half-open":  # a probe that ended without a verdict (full, cancelled) must not lock it out
            return self._probe_stale(now)
        return self.state == "closed" or now - self.opened_at >= self.open_for

    def _probe_stale(self, now: float) -> bool:
        return now - self.probe_at > max(self.open_for, 10.0)

    def success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self.state = "closed"
            self.open_for = self.base
            self.closed += 1

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half-open":
            self.open_for = min(self.open_for * 2, self.cap)
            self.state, self.opened_at, self.tripped = "open", now, False
        elif self.state == "closed" and self.failures >= self.threshold:
            self.state, self.opened_at, self.tripped = "open", now, False
            self.opened += 1

    def trip(self, now: float) -> None:
        """Open now: the background refresh found the infrastructure down."""
        if self.state == "closed":
            self.state, self.opened_at, self.tripped = "open", now, True
            self.opened += 1
        elif self.state == "half-open":
            self.state, self.opened_at = "open", now

    def describe(self, now: float) -> str:
        if self.state == "closed":
            return "closed"
        if self.state == "open":
            left = self.open_for - (now - self.opened_at)
            why = "the refresh found it down" if self.tripped else f"after {self.failures} failures"
            # (past due, it waits for an invocation to probe it: "next probe in 0.0 s" was no time)
            when = f"next probe in {left:.1f} s" if left >= 0.05 else "the next invocation placed there probes it"
            return f"open{':' if self.tripped else ''} {why}; {when}"
        return "half-open: a probe invocation is running"
