"""Prometheus counters of the event path, per proxy (label ``source``).

``received``: messages in a source's own format (an HTTP request, a stream
entry, a schedule tick); ``translated``: CloudEvents made from them;
``rejected``: messages refused (malformed, unsigned, too large);
``delivered``: event invocations that succeeded; ``dead_lettered``: event
invocations that failed every attempt.  Besides: ``duplicates`` (dropped
within the de-duplication window), ``unmatched`` (no trigger), ``retried``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["EventMetrics"]

KINDS = ("cloudevents", "webhook", "s3", "redis", "schedule")


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str) -> Counter:
            return Counter(f"spanfaas_events_{name}", doc, ["source"], registry=registry)

        self.received = counter("received", "Messages received from an event source, in its own format")
        self.translated = counter("translated", "CloudEvents translated from received messages")
        self.rejected = counter("rejected", "Messages rejected (malformed, bad signature, too large)")
        self.delivered = counter("delivered", "Event invocations that ran and succeeded")
        self.dead_lettered = counter("dead_lettered", "Event invocations moved to the dead-letter store")
        self.duplicates = counter("duplicates", "Events dropped as duplicates of one seen within the window")
        self.unmatched = counter("unmatched", "Events no trigger matched")
        self.retried = counter("retried", "Failed event invocations queued again with backoff")
        for kind in KINDS:  # every series exists from the start (rate() needs a zero)
            for c in (self.received, self.translated, self.rejected, self.delivered, self.dead_lettered):
                c.labels(kind)
