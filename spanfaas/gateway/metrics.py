"""Prometheus metrics of one gateway, in its own registry (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from spanfaas.model import InfraInfo, Result

__all__ = ["Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.invocations = Counter(
            "spanfaas_invocations", "Invocations by outcome", ["function", "status"], registry=r
        )
        self.errors = Counter(
            "spanfaas_invocation_errors", "Failed invocations by kind of failure", ["function", "kind"], registry=r
        )
        self.duration = Histogram(
            "spanfaas_invocation_duration_seconds",
            "Time from request to result, as the gateway sees it",
            ["function"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.cold_starts = Counter("spanfaas_cold_starts", "Invocations that started a new instance", ["function"], registry=r)
        self.queue_depth = Gauge("spanfaas_async_queue_depth", "Async invocations waiting to run", registry=r)
        self.instances = Gauge("spanfaas_instances", "Live instances per infrastructure", ["infra"], registry=r)
        self.functions = Gauge("spanfaas_functions", "Deployed functions per infrastructure", ["infra"], registry=r)
        self._ok: dict[str, tuple[Counter, Histogram]] = {}

    def observe(self, fn: str, result: Result, seconds: float) -> None:
        """Count one invocation that reached the function (hot path: children are cached)."""
        pair = self._ok.get(fn)
        if pair is None:
            pair = self._ok[fn] = (self.invocations.labels(fn, "succeeded"), self.duration.labels(fn))
        if result.error is None:
            pair[0].inc()
        else:
            self.invocations.labels(fn, "failed").inc()
            self.errors.labels(fn, result.error.kind).inc()
        pair[1].observe(seconds)
        if result.cold:
            self.cold_starts.labels(fn).inc()

    def infra_failed(self, fn: str) -> None:
        self.invocations.labels(fn, "failed").inc()
        self.errors.labels(fn, "infra").inc()

    def render(self, infos: list[InfraInfo], queue_depth: int) -> bytes:
        self.queue_depth.set(queue_depth)
        for info in infos:
            self.instances.labels(info.name).set(info.instances)
            self.functions.labels(info.name).set(info.functions)
        return generate_latest(self.registry)
