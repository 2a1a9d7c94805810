"""What every event proxy shares: the protocols, the errors, and the one
internal form of an event — a CloudEvents 1.0 event of the ``cloudevents`` SDK.

A proxy *translates* a message in its source's format (an HTTP request, a
Redis stream entry, a schedule tick) into CloudEvents; a *source* (Redis,
schedules) also runs a loop that pulls messages and hands the translated
events to a ``Sink``, which routes them into durable invocations.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import msgspec
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.v1.event import CloudEvent

from spanfaas.errors import Forbidden, InvalidPayload

__all__ = [
    "CE_JSON",
    "REQUIRED",
    "BadSignature",
    "CloudEvent",
    "EventProxy",
    "EventSource",
    "InvalidEvent",
    "Published",
    "Sink",
    "attributes_of",
    "check_text",
    "check_types",
    "decode_json",
    "digest_id",
    "escape_controls",
    "make_event",
    "structured",
]

CE_JSON = "application/cloudevents+json"
CE_BATCH_JSON = "application/cloudevents-batch+json"
REQUIRED = ("id", "source", "type", "specversion")

_encode = msgspec.json.Encoder().encode


class InvalidEvent(InvalidPayload):
    """The event (or the message that should carry one) is malformed."""

    slug, title = "invalid-event", "Invalid event"


class BadSignature(Forbidden):
    """A webhook's signature is missing or does not match its secret.

    A 403, not a 401: a 401 challenges the client to authenticate with an HTTP
    scheme (``WWW-Authenticate``, RFC 9110 §15.5.2), and the gateway's is Bearer,
    an API token, which a webhook's sender has none of; its credential is the
    signature, which was missing or wrong."""

    slug, title = "bad-signature", "Bad webhook signature"


class Published(msgspec.Struct, kw_only=True):
    """What became of one event: the invocations it started (none: no trigger
    matched, or a duplicate of an event seen within the window)."""

    id: str
    source: str
    type: str
    invocations: list[str] = []
    duplicate: bool = False
    error: dict[str, Any] | None = None
    """Why the event was not queued (a problem document, e.g. 422 ``value-refused``: the
    store refused a value of it); the other events of the request are not held back."""


class Sink(Protocol):
    """Where sources hand their events: routes them and commits the invocations."""

    async def publish(self, proxy: str, events: Sequence[CloudEvent], *, keep_refused: bool = False) -> list[Published]:
        """``keep_refused``: an event the store refuses goes to the dead-letter store (see ``EventService.publish``)."""
        ...


@runtime_checkable
class EventProxy(Protocol):
    """Translates one source's messages into CloudEvents.

    ``kind`` names the proxy in metrics (``source`` label) and in each
    invocation's event record.  HTTP proxies implement
    ``translate(headers, body) -> list[CloudEvent]``; pull sources implement
    ``EventSource`` too.
    """

    kind: str


@runtime_checkable
class EventSource(EventProxy, Protocol):
    """A proxy with its own loop: it reads from its source and publishes to the
    sink, acknowledging a message only once ``publish`` has returned (the
    invocations are then in the store)."""

    async def run(self, sink: Sink) -> None: ...


def make_event(attributes: dict[str, Any], data: Any = None, where: str = "the CloudEvent") -> CloudEvent:
    """A CloudEvent from attributes a proxy built; InvalidEvent when the SDK rejects them."""
    check_required(attributes, where)
    check_text(attributes, where)
    check_types(attributes, where)
    try:
        return CloudEvent(attributes, data)
    except (BaseCloudEventException, ValueError, TypeError) as exc:
        raise InvalidEvent(f"{where} is not valid: {exc}") from None


def check_required(attributes: Mapping[str, Any], where: str = "the CloudEvent") -> None:
    """InvalidEvent unless id, source, type and specversion are non-empty strings."""
    for name in REQUIRED:
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(missing_message(name, where, attributes))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def check_text(attributes: Mapping[str, Any], where: str = "the CloudEvent") -> None:
    """InvalidEvent when a text attribute holds a control character: CloudEvents 1.0 forbids
    U+0000-U+001F and U+007F-U+009F in strings (and a NUL cannot even be stored in PostgreSQL)."""
    for name, value in attributes.items():
        if isinstance(value, str) and (m := _CONTROL.search(value)):
            raise InvalidEvent(
                f"{where}'s '{name}' contains the control character U+{ord(m.group()):04X}; CloudEvents 1.0 "
                "forbids U+0000-U+001F and U+007F-U+009F in attribute values: remove or escape it"
            )


INT_RANGE = (-(2**31), 2**31 - 1)
"""CloudEvents 1.0's Integer: a 32-bit signed whole number."""


def check_types(attributes: Mapping[str, Any], where: str = "the CloudEvent") -> None:
    """InvalidEvent when an attribute's value is none of CloudEvents 1.0's types (Boolean, Integer,
    String, Binary, URI, URI-reference, Timestamp): an object, an array, a fraction, or an integer
    past 32 bits would not survive another CloudEvents binding (an HTTP header, a Kafka record)."""
    low, high = INT_RANGE
    for name, value in attributes.items():
        if value is None or isinstance(value, (str, bool, bytes, datetime)):
            continue
        if isinstance(value, int):
            if low <= value <= high:
                continue
            raise InvalidEvent(
                f"{where}'s '{name}' is {value}, past the CloudEvents Integer range ({low} to {high}); "
                "send a larger number as a string"
            )
        sent = _encode(value).decode() if isinstance(value, (dict, list, float)) else type(value).__name__
        raise InvalidEvent(
            f"{where}'s '{name}' is {sent[:80]}; a CloudEvents attribute is a string, a boolean or an integer "
            "(32-bit): send an object or an array in 'data', or encode it as a string"
        )


def escape_controls(text: str) -> str:
    """``text`` with the control characters ``check_text`` refuses %-escaped, as in a URL."""
    return _CONTROL.sub(lambda m: quote(m.group()), text)


def missing_message(name: str, where: str = "the CloudEvent", attributes: Mapping[str, Any] | None = None) -> str:
    """What is wrong with a required attribute: absent or empty, or sent as another JSON type."""
    value = (attributes or {}).get(name)
    if attributes is not None and name in attributes and not isinstance(value, str):
        sent = _encode(value).decode()
        return f"{where}'s '{name}' must be a non-empty string, got {sent}; id, source, type and specversion are strings"
    if name == "specversion":
        return f"{where} has no 'specversion' (or an empty one); spanfaas accepts \"1.0\""
    return f"{where} has no '{name}' attribute (or an empty one); id, source, type and specversion are required"


def attributes_of(event: CloudEvent) -> dict[str, Any]:
    """The event's attributes as JSON values (``time`` as RFC 3339 text)."""
    out: dict[str, Any] = {}
    for key, value in event.get_attributes().items():
        if value is None:
            continue
        if isinstance(value, datetime):
            value = _rfc3339(value)
        out[key] = value
    return out


def structured(event: CloudEvent, attrs: Mapping[str, Any] | None = None) -> bytes:
    """The event in structured JSON mode (``application/cloudevents+json``): the invocation's payload."""
    doc = dict(attrs if attrs is not None else attributes_of(event))
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        doc["data_base64"] = base64.b64encode(data).decode()
    elif data is not None:
        doc["data"] = data
    return _encode(doc)


def decode_json(data: bytes | str) -> Any:
    """Decode a message's JSON.  JSON nested past the decoder's depth raises ``msgspec.DecodeError``
    too, so it is the message's fault, as other bad JSON is (its RecursionError was a 500)."""
    try:
        return msgspec.json.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("it is nested too deeply to decode") from None


def digest_id(*parts: bytes) -> str:
    """A stable event id for sources that give none (so a re-delivery is recognized)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
        h.update(b"\0")
    return h.hexdigest()[:32]


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
