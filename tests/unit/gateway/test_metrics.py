"""The invocation metrics read exactly as prometheus_client's own counters and histogram."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from spanfaas.gateway.metrics import _BUCKETS, Metrics
from spanfaas.model import ErrorInfo, Result


def _reference() -> tuple[CollectorRegistry, Counter, Counter, Histogram, Counter]:
    r = CollectorRegistry(auto_describe=True)
    inv = Counter("spanfaas_invocations", "Invocations by outcome", ["function", "status"], registry=r)
    err = Counter("spanfaas_invocation_errors", "Failed invocations by kind of failure", ["function", "kind"], registry=r)
    Counter(
        "spanfaas_invocation_retries",
        "Failed runs of async invocations that were run again (retries), by kind of failure: "
        "not failed invocations, which are counted once, by their outcome",
        ["function", "kind"], registry=r,
    ).labels("h", "infra").inc(2)  # fmt: skip
    dur = Histogram(
        "spanfaas_invocation_duration_seconds", "Time from request to result, as the gateway sees it", ["function"],
        buckets=_BUCKETS, registry=r,
    )  # fmt: skip
    cold = Counter("spanfaas_cold_starts", "Invocations that started a new instance", ["function"], registry=r)
    Gauge("spanfaas_invocations_in_flight", "Invocations (sync and async) sent to an infrastructure and not answered yet: "
          "waiting for an instance, or running", ["function"], registry=r)  # fmt: skip
    Gauge("spanfaas_async_queue_depth", "Async invocations waiting to run (NaN: the store is down)", registry=r)
    Gauge("spanfaas_store_up", "1 when the store answered this scrape, 0 when it is down", registry=r).set(1)
    Gauge("spanfaas_instances", "Live instances per infrastructure", ["infra"], registry=r)
    Gauge("spanfaas_functions", "Deployed functions per infrastructure", ["infra"], registry=r)
    return r, inv, err, dur, cold


def _without_times(text: bytes) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def test_same_exposition_as_prometheus_client() -> None:
    ours = Metrics()
    ref, inv, err, dur, cold = _reference()
    calls = [("f", None, False, 0.0005), ("f", "error", True, 0.2), ("g", None, False, 7.0), ("f", None, False, 400.0)]
    for fn, kind, is_cold, seconds in calls:
        error = ErrorInfo(kind=kind, message="x") if kind else None  # type: ignore[arg-type]
        ours.observe(fn, Result(invocation_id="i", function=fn, error=error, cold=is_cold), seconds)
        inv.labels(fn, "succeeded")  # children in the order Metrics makes them
        dur.labels(fn)
        if kind:
            inv.labels(fn, "failed").inc()
            err.labels(fn, kind).inc()
        else:
            inv.labels(fn, "succeeded").inc()
        dur.labels(fn).observe(seconds)
        if is_cold:
            cold.labels(fn).inc()
    ours.retried("h", "infra")
    ours.retried("h", "infra")
    ours.infra_failed("h")
    inv.labels("h", "failed").inc()
    err.labels("h", "infra").inc()
    assert _without_times(ours.render([], 0)) == _without_times(generate_latest(ref))
