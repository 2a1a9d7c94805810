"""Early action and elastic scaling in the local runtime: the glue between pools and policies.

``LocalRuntime`` calls in here from a few hooks; the decisions come from the
pure policies in ``scaling`` (how many instances) and ``predict`` (when to
warm a cold function).  This module keeps the books:

**Prewarms.**  ``LocalRuntime.prewarm(name, trigger=...)`` starts a cold
function's template ahead of a call: on an invoke request's headers
(trigger ``headers``), on a DNS lookup (``dns``), or from the arrival
histograms (``predict``, which also *keeps* a template that the idle rule
would stop just before its next expected call).  Each prewarm that started a template is *held*:
until ``runtime.prewarm_hold`` seconds pass (``predict``: until its expected
window closes) the template is exempt from the idle rule that scales to zero.

- The next invocation *consumes* the prewarm: it is a cold start avoided when
  the template was ready by then, a cold start overlapped (shortened) when it
  was still starting.  Only a prewarm still held when the call comes counts:
  one whose hold ended before it is wasted, whether or not a tick saw it end.
- A prewarm whose hold ends without an invocation is *wasted*; so is one
  *released* by the gateway because the request that asked for it failed
  validation.  Either way the template goes back under the normal idle rule:
  after ``scaling.idle_ttl`` without invocations it stops (zero processes).

**Scaling.**  Each pool's admitted calls (in flight + waiting; not those a full queue refuses) are counted on
the invocation path (two integer updates); every runtime tick feeds the peak
and the latency EWMA to the pool's ``Autoscaler`` and applies its decision:
``Pool.scale(desired)`` forks up to it (waiters get the new instances as they
come up), ``Pool.retire_idle`` ends instances beyond it once they have been
idle for the cool-down.  Waiting invocations make the pool fork at once
(``Pool._grow``), before any tick.

Counts per function (``EarlyStats``): prewarms started, cold starts avoided
and overlapped, prewarms wasted (by trigger), scale events (out, in, zero).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from spanfaas.config import RuntimeSettings
from spanfaas.errors import plural
from spanfaas.model import EarlyStats
from spanfaas.runtime.predict import Candidate, Plan, Predictor
from spanfaas.runtime.scaling import Autoscaler

if TYPE_CHECKING:
    from spanfaas.runtime.pool import Pool

__all__ = ["START_OVERHEAD", "EarlyAction"]

log = logging.getLogger("spanfaas.runtime")

EWMA_ALPHA = 0.2
START_OVERHEAD = 0.15
"""Seconds a template start takes beyond its import (fork, sandbox, first instance), for prediction leads."""


class _Prewarm:
    __slots__ = ("at", "mib", "trigger", "until")

    def __init__(self, trigger: str, at: float, until: float, mib: int) -> None:
        self.trigger = trigger
        self.at = at
        self.until = until
        self.mib = mib


class _Watch:
    """What the runtime tracks of one pool."""

    __slots__ = ("admitted", "ewma_ms", "peak", "prewarms", "samples", "scaler", "seen_used")

    def __init__(self, pool: Pool) -> None:
        self.scaler = Autoscaler(pool.spec.scaling, _slots(pool))
        self.admitted = 0
        """Calls running or queued: the concurrency the autoscaler sees (a call refused for a full queue is not)."""
        self.peak = 0
        self.ewma_ms = 0.0
        self.samples = 0
        self.seen_used = pool.last_used
        self.prewarms: deque[_Prewarm] = deque()


def _slots(pool: Pool) -> int:
    return 1 if pool.spec.isolation == "strict" else pool.spec.resources.concurrency


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


class EarlyAction:
    """Prewarm ledger, arrival histograms and autoscaling of one runtime; see the module doc."""

    def __init__(self, rt: RuntimeSettings, *, tick: float = 0.5) -> None:
        self.hold = rt.prewarm_hold
        self.tick_interval = tick
        self.predictor = Predictor(rt.predict_budget) if rt.predict else None
        self._watch: dict[Pool, _Watch] = {}
        self._stats: dict[str, EarlyStats] = {}
        self.trace: list[tuple[float, str, str]] | None = None
        """Set to a list to record ``(time.monotonic(), function, event)`` (tests, debugging)."""

    def _w(self, pool: Pool) -> _Watch:
        w = self._watch.get(pool)
        if w is None:
            w = self._watch[pool] = _Watch(pool)
        return w

    def scaler(self, pool: Pool) -> Autoscaler:
        """``pool``'s scaling policy, with what it has seen."""
        return self._w(pool).scaler

    def _s(self, name: str) -> EarlyStats:
        s = self._stats.get(name)
        if s is None:
            s = self._stats[name] = EarlyStats()
        return s

    def note(self, name: str, event: str) -> None:
        if self.trace is not None:
            self.trace.append((time.monotonic(), name, event))

    # -- prewarms -----------------------------------------------------------------------

    def prewarmed(self, pool: Pool, trigger: str, now: float, until: float | None = None, mib: int = 0) -> None:
        """A prewarm started ``pool``'s template (it was cold)."""
        self._w(pool).prewarms.append(_Prewarm(trigger, now, now + self.hold if until is None else until, mib))
        _bump(self._s(pool.spec.name).prewarms, trigger)
        self.note(pool.spec.name, f"prewarm:{trigger}")

    def ready(self, pool: Pool, trigger: str) -> None:
        self.note(pool.spec.name, f"ready:{trigger}")

    def release(self, pool: Pool) -> bool:
        """The request that asked for a prewarm failed: stop holding it (counted as wasted)."""
        w = self._watch.get(pool)
        if w is None:
            return False
        for pw in reversed(w.prewarms):
            if pw.trigger != "predict":
                w.prewarms.remove(pw)
                _bump(self._s(pool.spec.name).wasted, pw.trigger)
                self.note(pool.spec.name, f"released:{pw.trigger}")
                return True
        return False

    def holding(self, pool: Pool, now: float) -> bool:
        """Is a prewarm keeping ``pool`` from scaling to zero?  (Expired prewarms count as wasted.)"""
        w = self._watch.get(pool)
        if w is None or not w.prewarms:
            return False
        held = False
        for pw in list(w.prewarms):
            if pw.until <= now:
                w.prewarms.remove(pw)
                _bump(self._s(pool.spec.name).wasted, pw.trigger)
                self.note(pool.spec.name, f"wasted:{pw.trigger}")
            else:
                held = True
        return held

    # -- the invocation path (cheap) --------------------------------------------------------

    def arrived(self, pool: Pool, now: float | None = None) -> None:
        """A call of ``pool`` came in (``now``: the monotonic clock, read only when a
        prewarm is outstanding)."""
        w = self._watch.get(pool) or self._w(pool)
        if w.prewarms:
            self._consume(pool, w, time.monotonic() if now is None else now)

    def admitted(self, pool: Pool) -> None:
        """The call of ``pool`` that ``arrived`` has an instance or a place in its queue."""
        w = self._watch.get(pool) or self._w(pool)
        w.admitted += 1
        w.peak = max(w.peak, w.admitted)

    def _consume(self, pool: Pool, w: _Watch, now: float) -> None:
        """The call uses the oldest prewarm still held.  Holds that ended since the last
        tick (which expires them every ``tick`` s) are wasted here, as the tick would
        have counted them: their call never came, and this one was not what they were for."""
        name = pool.spec.name
        s = self._s(name)
        while w.prewarms:
            pw = w.prewarms.popleft()
            if pw.until <= now:
                _bump(s.wasted, pw.trigger)
                self.note(name, f"wasted:{pw.trigger}")
                continue
            if pool.state == "ready":
                _bump(s.avoided, pw.trigger)
                self.note(name, f"avoided:{pw.trigger}")
            else:
                _bump(s.overlapped, pw.trigger)
                self.note(name, f"overlapped:{pw.trigger}")
            return

    def done(self, pool: Pool, duration_ms: float | None, *, admitted: bool = True) -> None:
        """The call ended (``admitted``: after ``admitted``; else it was refused, or gave up, first)."""
        w = self._watch.get(pool)
        if w is None:
            return
        if admitted:
            w.admitted -= 1
        if duration_ms is not None:
            if w.ewma_ms:
                w.ewma_ms += EWMA_ALPHA * (duration_ms - w.ewma_ms)
            else:
                w.ewma_ms = duration_ms
            w.samples += 1

    # -- the runtime's tick ------------------------------------------------------------------

    def autoscale(self, pool: Pool, now: float) -> None:
        """Feed the pool's policy what was seen since the last tick and apply its decision."""
        w = self._w(pool)
        d = w.scaler.observe(now, w.peak, w.ewma_ms if w.samples else None)
        w.peak = w.admitted
        w.samples = 0
        name = pool.spec.name
        if d.change != "hold":
            _bump(self._s(name).scale, d.change)
            self.note(name, f"scale-{d.change}:{d.desired}")
        pool.scale(d.desired)
        sc = pool.spec.scaling
        pool.retire_idle(now, keep=max(sc.min, 1, d.desired), idle_for=min(sc.idle_ttl, sc.cooldown))
        if d.change == "out":
            log.info("spanfaas runtime: %s scales out to %s (%s)", name, plural(d.desired, "instance"), d.reason)
        elif d.change == "in":  # told once it retired what it could: what is left, and why
            log.info("spanfaas runtime: %s scales in: %s wanted for calls (%s); %s",
                     name, plural(d.desired, "instance"), d.reason, _left(pool))  # fmt: skip

    def scaled_to_zero(self, pool: Pool) -> None:
        w = self._w(pool)
        w.scaler = Autoscaler(pool.spec.scaling, _slots(pool))
        w.peak = w.admitted
        pool.scale(0)
        _bump(self._s(pool.spec.name).scale, "zero")
        self.note(pool.spec.name, "scale-zero")

    def predict(self, now: float, pools: list[Pool], warming: set[str]) -> list[tuple[Pool, Plan]]:
        """Record the arrivals seen since the last tick; which pools to warm (cold) or keep
        (ready, idle past their TTL) because their next call is expected soon, within the budget."""
        if self.predictor is None:
            return []
        by_name: dict[str, Pool] = {}
        candidates: list[Candidate] = []
        held = 0
        for pool in pools:
            w = self._w(pool)
            name = pool.spec.name
            if pool.last_used != w.seen_used:
                w.seen_used = pool.last_used
                self.predictor.arrived(name, pool.last_used)
            held += sum(pw.mib for pw in w.prewarms if pw.trigger == "predict")
            if w.prewarms or pool.key in warming:
                continue
            idle = pool.state == "ready" and now - pool.last_used > pool.spec.scaling.idle_ttl
            if pool.state == "cold" or idle:
                by_name[name] = pool
                lead = pool.import_ms / 1000.0 + START_OVERHEAD + self.tick_interval
                candidates.append(Candidate(name, pool.spec.resources.memory * 2, lead))
        if not candidates:
            return []
        return [(by_name[p.name], p) for p in self.predictor.plan(now, candidates, held)]

    def forget(self, pool: Pool, *, removed: bool = False) -> None:
        """``pool`` is gone (replaced or removed): its outstanding prewarms were wasted."""
        w = self._watch.pop(pool, None)
        if w is not None:
            for pw in w.prewarms:
                _bump(self._s(pool.spec.name).wasted, pw.trigger)
        if removed and self.predictor is not None:
            self.predictor.forget(pool.spec.name)

    # -- reading ------------------------------------------------------------------------------

    def stats(self, pools: dict[str, Pool]) -> dict[str, EarlyStats]:
        out = {}
        for name, s in self._stats.items():
            out[name] = EarlyStats(
                prewarms=dict(s.prewarms), avoided=dict(s.avoided), overlapped=dict(s.overlapped),
                wasted=dict(s.wasted), scale=dict(s.scale),
            )  # fmt: skip
        for name, pool in pools.items():
            s = out.get(name) or out.setdefault(name, EarlyStats())
            s.desired = pool.desired
            s.instances = pool.stats()["instances"]
        return out


def _left(pool: Pool) -> str:
    """What a scale-in leaves of ``pool``.  The autoscaler's count is the instances it wants
    for calls; the pool keeps idle ones beyond it (``Pool._floor``, ``retire_idle``), and
    those beyond these retire at a later tick: ``3 left: 3 idle (1 forked ahead as a spare,
    scaling.prefork = 1; 2 retire once idle 0.5 s)``."""
    c, sc = pool.census(), pool.spec.scaling
    if pool.spec.isolation == "strict":
        kept = max(sc.prefork if pool.demanded else 0, pool.desired - c.busy)

        def why(n: int) -> str:
            return f"forked ahead as {'a spare' if n == 1 else 'spares'}, scaling.prefork = {sc.prefork}"
    else:
        kept = max(0, max(sc.min, 1, pool.desired) - c.busy)

        def why(n: int) -> str:
            return f"kept by scaling.min = {sc.min}" if sc.min >= 1 else f"kept warm until scaling.idle_ttl = {sc.idle_ttl:g} s"
    parts = [f"{c.busy} busy"] if c.busy else []
    if c.idle > kept:
        idle_for = min(sc.idle_ttl, sc.cooldown)
        parts.append(f"{c.idle} idle ({kept} {why(kept)}; {c.idle - kept} retire once idle {idle_for:g} s)" if kept else
                     f"{c.idle} idle (retire once idle {idle_for:g} s)")  # fmt: skip
    elif c.idle:
        parts.append(f"{c.idle} idle ({why(c.idle)})")
    if c.starting:
        parts.append(f"{c.starting} starting")
    return f"{c.left} left" + (": " + ", ".join(parts) if parts else "")
