"""How many instances a pool should have: a KPA-like scaling policy.

Pure: no clock, no I/O, no processes.  The runtime feeds it what it saw of one
pool (the peak concurrency since the last look, the invocation latency) with
the time it looked; it answers with a :class:`Decision`::

    target  = scaling.target_concurrency          (default: an instance's slots,
                                                   1 in strict, resources.concurrency in reuse)
    desired = clamp(ceil(peak over the last `cooldown` seconds of concurrency / target), min, max)

- **scale-out now**: the window's peak includes the newest observation, so
  ``desired`` rises the moment concurrency does;
- **scale-in after a cool-down**: ``desired`` falls only once the higher
  load has left the ``scaling.cooldown`` window (Knative's stable window);
- **latency**: an instance with several slots can saturate before its slots
  fill (a CPU-bound async handler).  When the latency EWMA passes
  ``LATENCY_FACTOR`` × its baseline (the lowest EWMA seen lately), the target
  shrinks in proportion, so the pool grows where the bottleneck is.

Scale to zero is not decided here: the runtime stops a pool's template after
``scaling.idle_ttl`` seconds without invocations (``desired`` is 0 by then
unless ``scaling.min`` says otherwise).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from msgspec import Struct

from spanfaas.model import Scaling

__all__ = ["LATENCY_FACTOR", "Autoscaler", "Decision"]

LATENCY_FACTOR = 2.0
"""Latency over this multiple of the baseline counts as a bottleneck."""
BASELINE_DRIFT = 0.02
"""Per observation, how far the latency baseline climbs toward the EWMA (it falls at once)."""

Change = Literal["out", "in", "hold"]


class Decision(Struct, frozen=True):
    desired: int
    """Instances the pool should have (within scaling.min and scaling.max)."""
    change: Change
    """out / in: ``desired`` rose / fell with this observation; hold: unchanged."""
    reason: str = ""


class Autoscaler:
    """The scaling policy of one pool; see the module doc."""

    def __init__(self, scaling: Scaling, slots: int) -> None:
        self.scaling = scaling
        self.slots = max(1, slots)
        self.target = float(scaling.target_concurrency or self.slots)
        self.desired = scaling.min
        self._window: deque[tuple[float, float, int, float]] = deque()
        """(time, instances needed, concurrency, target), needed strictly decreasing: the front is the window's peak."""
        self._baseline = 0.0

    @property
    def peak(self) -> int:
        """The peak concurrency over the cool-down window (as of the last observation)."""
        return self._window[0][2] if self._window else 0

    def effective_target(self, latency_ms: float | None) -> float:
        """The target, shrunk when latency shows the instances saturated below their slots."""
        if latency_ms is None or latency_ms <= 0 or self.target <= 1:
            return self.target
        if self._baseline <= 0 or latency_ms < self._baseline:
            self._baseline = latency_ms
        else:
            self._baseline += (latency_ms - self._baseline) * BASELINE_DRIFT
        ratio = latency_ms / self._baseline
        if ratio <= LATENCY_FACTOR:
            return self.target
        return max(1.0, self.target / ratio)

    def observe(self, now: float, concurrency: int, latency_ms: float | None = None) -> Decision:
        """Record the peak concurrency seen since the last call (in flight + waiting)."""
        target = self.effective_target(latency_ms)
        need = concurrency / target  # instances this look asks for: a latency scale-out holds for the cooldown too
        window = self._window
        while window and window[-1][1] <= need:
            window.pop()
        window.append((now, need, concurrency, target))
        horizon = now - self.scaling.cooldown
        while window[0][0] < horizon:
            window.popleft()
        _, peak_need, peak, target = window[0]
        sc = self.scaling
        want = min(sc.max, max(sc.min, math.ceil(peak_need - 1e-9)))
        before, self.desired = self.desired, want
        if want > before:
            why = f"peak concurrency {peak} / target {target:g}"
            if target < self.target:
                why += f" (latency {latency_ms:.1f} ms is {latency_ms / self._baseline:.1f}x its baseline)"  # type: ignore[operator]
            return Decision(want, "out", why)
        if want < before:
            return Decision(want, "in", f"peak concurrency {peak} / target {target:g} over the last {sc.cooldown:g} s")
        return Decision(want, "hold")
