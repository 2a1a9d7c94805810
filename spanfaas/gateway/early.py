"""Early action in the gateway: start a function before it is asked for.

Two triggers reach the infrastructure's ``prewarm(name)``:

- **headers** — the invoke endpoint calls :meth:`EarlyAction.headers` once it
  has a request's headers and knows the function, *before* it reads the
  body, so a slow upload and a cold start overlap.  ``prewarm`` returns
  promptly (it starts a template and does not wait for it); on a warm
  function it is a dictionary lookup.  When the request then fails (body too
  large, not JSON, client gone) the gateway calls :meth:`release`: the
  infrastructure stops holding what it prepared (the local runtime counts the
  prewarm as wasted and lets the normal idle rule scale it back to zero).
- **dns** — the DNS responder (``dns.py``) calls :meth:`soon` for a lookup of
  ``<function>.<zone>``: the prewarm runs in the background while the
  client connects.

The trigger travels to the adapters in ``PREWARM_TRIGGER``.  The counts the
infrastructures keep (prewarms, cold starts avoided and overlapped, prewarms
wasted, scale events) are exported on ``/metrics`` by :class:`EarlyCollector`,
read at scrape time.  ``trace``, when set to a list, records the gateway's
side of each early action as ``(time.monotonic(), function, event)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from spanfaas.errors import SpanfaasError
from spanfaas.infra.base import (
    PREWARM_TRIGGER,
    Infrastructure,
    Releasing,
    ReportsEarlyStats,
)

__all__ = ["EarlyAction", "EarlyCollector"]

log = logging.getLogger("spanfaas.gateway")

WARM_FOR = 1.0
"""Seconds after a warm call during which header prewarms of that function are skipped
(at most half its idle_ttl, so the template cannot have scaled to zero meanwhile)."""


class EarlyAction:
    """The gateway's side of early action; see the module doc."""

    def __init__(self, infra: Infrastructure, registry: CollectorRegistry, *, enabled: bool = True) -> None:
        self.infra = infra
        self.enabled = enabled
        """Prewarm on invoke headers (``settings.early_action``); DNS lookups prewarm regardless."""
        self.trace: list[tuple[float, str, str]] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._warm: dict[str, float] = {}
        """Per function, until when its last warm call says it is still up (monotonic)."""
        self.dns_queries = Counter(
            "spanfaas_dns_queries", "DNS lookups answered, by response code", ["rcode"], registry=registry
        )
        registry.register(EarlyCollector(infra))

    def note(self, name: str, event: str) -> None:
        if self.trace is not None:
            self.trace.append((time.monotonic(), name, event))

    async def headers(self, name: str) -> bool:
        """An invoke request's headers are in: prewarm before reading its body.
        True when this started something: only then may the request :meth:`release` it.

        Skipped (0.1 µs instead of ~1.5 µs through the scheduler) while a call of
        ``name`` ran warm moments ago: its template is up, there is nothing to start."""
        if self.trace is not None:
            self.note(name, "headers")
        until = self._warm.get(name)
        if until is not None and until > time.monotonic():
            return False
        return await self._prewarm(name, "headers")

    def ran(self, name: str, cold: bool, idle_ttl: float) -> None:
        """A sync call of ``name`` finished; a warm one lets the next headers skip the prewarm."""
        if not cold:
            self._warm[name] = time.monotonic() + min(WARM_FOR, idle_ttl / 2)

    def release(self, name: str) -> None:
        """The request whose :meth:`headers` started a prewarm of ``name`` failed before it ran
        (a request whose prewarm started nothing must not release another's)."""
        self.note(name, "release")
        infra = self.infra
        if isinstance(infra, Releasing):
            infra.release(name)

    def soon(self, name: str, trigger: str) -> None:
        """Prewarm in the background (the DNS responder answers without waiting)."""
        self.note(name, trigger)
        task = asyncio.get_running_loop().create_task(self._prewarm(name, trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prewarm(self, name: str, trigger: str) -> bool:
        token = PREWARM_TRIGGER.set(trigger)
        try:
            return await self.infra.prewarm(name)
        except (SpanfaasError, OSError) as exc:  # a prewarm is a hint: the invocation reports real failures
            log.info("prewarming %s (%s) failed: %s", name, trigger, exc)
            return False
        finally:
            PREWARM_TRIGGER.reset(token)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _children(infra: Infrastructure) -> Iterator[Infrastructure]:
    from spanfaas.scheduler import SpanningInfrastructure

    if isinstance(infra, SpanningInfrastructure):
        for site in infra.sites:
            yield site.infra
    else:
        yield infra


class EarlyCollector:
    """Exports each infrastructure's ``early_stats()`` at scrape time."""

    def __init__(self, infra: Infrastructure) -> None:
        self.infra = infra

    def describe(self) -> list[Metric]:
        return []  # nothing to read before the infrastructures run

    def collect(self) -> Iterator[Metric]:
        labels = ["infra", "function", "trigger"]
        prewarms = CounterMetricFamily("spanfaas_prewarms", "Templates started ahead of a call, by trigger", labels=labels)
        avoided = CounterMetricFamily(
            "spanfaas_cold_starts_avoided", "Calls that found a prewarmed template ready (a cold start avoided)", labels=labels
        )
        overlapped = CounterMetricFamily(
            "spanfaas_cold_starts_overlapped", "Calls that found a prewarmed template still starting (a cold start shortened)", labels=labels
        )
        wasted = CounterMetricFamily(
            "spanfaas_prewarms_wasted", "Prewarms no call followed in time, or released by a failed request", labels=labels
        )
        scale = CounterMetricFamily(
            "spanfaas_scale_events", "Autoscaler decisions: out, in, zero", labels=["infra", "function", "direction"]
        )
        desired = GaugeMetricFamily("spanfaas_desired_instances", "Instances the autoscaler wants", labels=["infra", "function"])
        live = GaugeMetricFamily(
            "spanfaas_function_instances", "Live instances of each function (0: scaled to zero)", labels=["infra", "function"]
        )
        for infra in _children(self.infra):
            if not isinstance(infra, ReportsEarlyStats):
                continue
            for fn, s in sorted(infra.early_stats().items()):
                for family, counts in ((prewarms, s.prewarms), (avoided, s.avoided), (overlapped, s.overlapped),
                                       (wasted, s.wasted), (scale, s.scale)):  # fmt: skip
                    for key, n in sorted(counts.items()):
                        family.add_metric([infra.name, fn, key], n)
                desired.add_metric([infra.name, fn], s.desired)
                live.add_metric([infra.name, fn], s.instances)
        yield from (prewarms, avoided, overlapped, wasted, scale, desired, live)
