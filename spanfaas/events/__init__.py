"""Event proxies and the trigger router.

Events from other systems start functions: a *proxy* translates a message
in its source's format into a CloudEvent (CloudEvents 1.0, the ``cloudevents``
SDK), the *router* matches it against the triggers in force, and the
matching functions get durable async invocations with the CloudEvent as
their payload (``context.event`` holds its attributes).

Layering: ``events`` sits beside ``gateway`` (which serves its HTTP
endpoints and runs its invocations) and uses ``model``, ``errors``,
``config`` and ``store`` only.  Modules, one concept each:

- ``base``: the ``EventProxy``/``EventSource`` protocols, errors, the event form;
- one module per source: ``cloudevents_http``, ``webhook``, ``s3``,
  ``redis_streams``, ``schedule``; ``memory`` is an in-process source for tests;
- ``router`` (triggers), ``admit`` (group commit with de-duplication),
  ``delivery`` (retries, dead letters), ``metrics``, ``service`` (the wiring).
"""

from spanfaas.events.base import (
    BadSignature,
    CloudEvent,
    EventProxy,
    EventSource,
    InvalidEvent,
    Published,
    Sink,
)
from spanfaas.events.service import EventService

__all__ = [
    "BadSignature",
    "CloudEvent",
    "EventProxy",
    "EventService",
    "EventSource",
    "InvalidEvent",
    "Published",
    "Sink",
]
