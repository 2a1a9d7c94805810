"""Prometheus metrics of one gateway, in its own registry (never the global one).

The invocation counters and the duration histogram are updated on every
request: they are plain numbers here (``_Invocations``), turned into metric
families only when ``/metrics`` is scraped.  A prometheus_client child takes a
lock and a few calls per update; this is an increment and a bisect.  The
families read exactly as prometheus_client's own counters and histogram
would (``_total``, ``_created``, cumulative ``le`` buckets).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from spanfaas.model import InfraInfo, Result

__all__ = ["Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_LE = [repr(b) for b in _BUCKETS] + ["+Inf"]  # as prometheus_client writes these bounds ("0.0005", "1.0")


class _Count:
    """One labelled counter: its value and when it was first touched."""

    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class _Histogram:
    """One labelled histogram: counts per bucket (not cumulative), their sum."""

    __slots__ = ("counts", "sum", "created")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(_BUCKETS, seconds)] += 1  # bucket `le` holds values <= its bound
        self.sum += seconds


class _Invocations:
    """The per-invocation metrics, as a collector of the gateway's registry."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, ...], _Count] = {}
        self.errors: dict[tuple[str, ...], _Count] = {}
        self.durations: dict[str, _Histogram] = {}
        self.cold_starts: dict[tuple[str, ...], _Count] = {}
        self.retries: dict[tuple[str, ...], _Count] = {}
        self.in_flight: dict[str, int] = {}
        """Per function, the calls sent to an infrastructure and not answered yet (the gateway's
        hot path counts them up and down around ``infra.invoke``)."""

    @staticmethod
    def count(counts: dict[tuple[str, ...], _Count], key: tuple[str, ...]) -> _Count:
        c = counts.get(key)
        if c is None:
            c = counts[key] = _Count()
        return c

    def collect(self) -> Iterator[Metric]:
        yield _counter("spanfaas_invocations", "Invocations by outcome", ["function", "status"], self.outcomes)
        yield _counter("spanfaas_invocation_errors", "Failed invocations by kind of failure", ["function", "kind"], self.errors)
        yield _counter(
            "spanfaas_invocation_retries",
            "Failed runs of async invocations that were run again (retries), by kind of failure: "
            "not failed invocations, which are counted once, by their outcome",
            ["function", "kind"], self.retries,
        )  # fmt: skip
        doc = "Time from request to result, as the gateway sees it"
        hist = HistogramMetricFamily("spanfaas_invocation_duration_seconds", doc, labels=["function"])
        created = GaugeMetricFamily("spanfaas_invocation_duration_seconds_created", doc, labels=["function"])
        for fn, h in list(self.durations.items()):
            total, buckets = 0, []
            for le, n in zip(_LE, h.counts):
                total += n
                buckets.append((le, float(total)))
            hist.add_metric([fn], buckets, h.sum)
            created.add_metric([fn], h.created)
        yield hist
        yield created
        yield _counter("spanfaas_cold_starts", "Invocations that started a new instance", ["function"], self.cold_starts)
        in_flight = GaugeMetricFamily(
            "spanfaas_invocations_in_flight",
            "Invocations (sync and async) sent to an infrastructure and not answered yet: waiting for an instance, or running",
            labels=["function"],
        )
        for fn, n in list(self.in_flight.items()):
            in_flight.add_metric([fn], n)
        yield in_flight


def _counter(name: str, doc: str, labels: list[str], counts: dict[tuple[str, ...], _Count]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, c in list(counts.items()):
        family.add_metric(list(key), c.value, created=c.created)
    return family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._inv = _Invocations()
        r.register(self._inv)
        self.queue_depth = Gauge("spanfaas_async_queue_depth", "Async invocations waiting to run (NaN: the store is down)", registry=r)
        self.store_up = Gauge("spanfaas_store_up", "1 when the store answered this scrape, 0 when it is down", registry=r)
        self.instances = Gauge("spanfaas_instances", "Live instances per infrastructure", ["infra"], registry=r)
        self.functions = Gauge("spanfaas_functions", "Deployed functions per infrastructure", ["infra"], registry=r)
        self._ok: dict[str, tuple[_Count, _Histogram]] = {}
        self.in_flight = self._inv.in_flight

    def observe(self, fn: str, result: Result, seconds: float, *, count: bool = True) -> None:
        """Count one invocation that reached the function (hot path: one dict lookup when it succeeded).
        ``count`` False: its time and cold start only, its outcome not yet known (a failed run
        that may be retried): ``finished`` or ``retried`` counts it once that is known."""
        if not count:
            self._inv.durations.setdefault(fn, _Histogram()).observe(seconds)
            if result.cold:
                self._inv.count(self._inv.cold_starts, (fn,)).value += 1
            return
        pair = self._ok.get(fn)
        if pair is None:
            inv = self._inv
            hist = inv.durations.get(fn)
            if hist is None:
                hist = inv.durations[fn] = _Histogram()
            pair = self._ok[fn] = (inv.count(inv.outcomes, (fn, "succeeded")), hist)
        if result.error is None:
            pair[0].value += 1
        else:
            self._inv.count(self._inv.outcomes, (fn, "failed")).value += 1
            self._inv.count(self._inv.errors, (fn, result.error.kind)).value += 1
        pair[1].observe(seconds)
        if result.cold:
            self._inv.count(self._inv.cold_starts, (fn,)).value += 1

    def finished(self, fn: str, error_kind: str | None) -> None:
        """Count one invocation's outcome: succeeded (``error_kind`` None) or failed of that kind."""
        if error_kind is None:
            self._inv.count(self._inv.outcomes, (fn, "succeeded")).value += 1
        else:
            self._inv.count(self._inv.outcomes, (fn, "failed")).value += 1
            self._inv.count(self._inv.errors, (fn, error_kind)).value += 1

    def retried(self, fn: str, kind: str) -> None:
        """Count a failed run (of ``kind``) of an invocation that runs again: an attempt, not its outcome."""
        self._inv.count(self._inv.retries, (fn, kind)).value += 1

    def refused(self, fn: str) -> None:
        """Count one invocation refused because the function was full (429): it did not run."""
        self._inv.count(self._inv.outcomes, (fn, "refused")).value += 1

    def infra_failed(self, fn: str, kind: str = "infra") -> None:
        """Count one invocation that failed before it reached the function: the platform's
        failure (``infra``), or ``not_found`` (the function was removed before it ran)."""
        self._inv.count(self._inv.outcomes, (fn, "failed")).value += 1
        self._inv.count(self._inv.errors, (fn, kind)).value += 1

    def render(self, infos: list[InfraInfo], queue_depth: int | None) -> bytes:
        """The exposition; ``queue_depth`` None: the store could not say (it is down)."""
        self.queue_depth.set(float("nan") if queue_depth is None else queue_depth)
        self.store_up.set(0 if queue_depth is None else 1)
        for info in infos:
            self.instances.labels(info.name).set(info.instances)
            self.functions.labels(info.name).set(info.functions)
        return generate_latest(self.registry)
