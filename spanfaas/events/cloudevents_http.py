"""CloudEvents over HTTP (``POST /v1/events``): binary, structured and batched mode.

- binary: the attributes in ``ce-*`` headers, the data in the body (its
  ``Content-Type`` is the event's ``datacontenttype``);
- structured: the whole event as ``application/cloudevents+json``;
- batched: a JSON array of structured events as ``application/cloudevents-batch+json``.

The SDK fills in a missing ``id`` on its own; the HTTP binding must not, so
the required attributes are checked before the SDK sees the message.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import msgspec
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from dateutil.parser import isoparse  # type: ignore[import-untyped]

from spanfaas.events.base import (
    CE_BATCH_JSON,
    CE_JSON,
    REQUIRED,
    CloudEvent,
    InvalidEvent,
    check_required,
    check_text,
    decode_json,
    make_event,
    missing_message,
)

__all__ = ["CloudEventsProxy", "event_from_fields", "parse_structured"]

_FORMAT = JSONFormat()
_decode = decode_json
_HINT = (
    "send a CloudEvent in structured mode (Content-Type: application/cloudevents+json) "
    "or binary mode (ce-id, ce-source, ce-type, ce-specversion headers)"
)


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


def parse_structured(doc: Any, where: str = "the CloudEvent") -> CloudEvent:
    """A CloudEvent from a decoded structured-mode JSON object."""
    if not isinstance(doc, dict):
        raise InvalidEvent(f"{where} must be a JSON object with id, source, type and specversion; {_HINT}")
    check_required(doc, where)
    prefix = "" if where == "the CloudEvent" else f"{where}: "
    if doc["specversion"] != "1.0":
        raise InvalidEvent(f"{prefix}specversion {doc['specversion']!r} is not supported; send \"1.0\"")
    if "data" in doc and "data_base64" in doc:
        raise InvalidEvent(f"{where} has both 'data' and 'data_base64'; send one")
    # JSON Format 1.0.2, 2.2: "When decoding attributes and a null value is encountered, it MUST be
    # treated as the equivalent of unset or omitted" (its examples send "subject": null, "time": null).
    attrs = {k: v for k, v in doc.items() if k not in ("data", "data_base64") and v is not None}
    data: Any = doc.get("data")
    if "data_base64" in doc:
        try:
            data = base64.b64decode(doc["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidEvent(f"{where} has a 'data_base64' that is not base64") from None
    _parse_time(attrs, prefix)
    return make_event(attrs, data, where)


def _parse_time(attrs: dict[str, Any], prefix: str = "", name: str = "time") -> None:
    """``time`` as a datetime; InvalidEvent, saying what an RFC 3339 timestamp looks like, unless it is one."""
    if "time" not in attrs:
        return
    value = attrs["time"]
    try:
        when = isoparse(value)
    except (ValueError, TypeError, OverflowError):
        when = None
    if when is None or when.tzinfo is None:  # a date, or a time without its offset, is not RFC 3339
        why = "" if when is None else " (a date, a time and a zone offset)"
        raise InvalidEvent(f"{prefix}{name} {value!r} is not an RFC 3339 timestamp{why}; send e.g. \"2024-05-01T12:00:00Z\"")
    attrs["time"] = when


class CloudEventsProxy:
    kind = "cloudevents"

    @staticmethod
    def batched(headers: Mapping[str, str]) -> bool:
        """Whether the request is a batch (its events answered one by one)."""
        return _media_type(headers.get("content-type", "")) == CE_BATCH_JSON

    def translate(self, headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
        """The events of one request; InvalidEvent says what is wrong with it."""
        media = _media_type(headers.get("content-type", ""))
        if media == CE_JSON:
            return [parse_structured(self._json(body))]
        if media == CE_BATCH_JSON:
            docs = self._json(body)
            if not isinstance(docs, list):
                raise InvalidEvent("a batch (application/cloudevents-batch+json) must be a JSON array of CloudEvents")
            return [parse_structured(d, f"event {i} of the batch") for i, d in enumerate(docs)]
        if any(k.startswith("ce-") for k in headers):
            return [self._binary(headers, body, media)]
        raise InvalidEvent(f"this request carries no CloudEvent; {_HINT}")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return _decode(body)
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"the body is not valid JSON: {exc}; {_HINT}") from None

    @staticmethod
    def _binary(headers: Mapping[str, str], body: bytes, media: str) -> CloudEvent:
        for name in REQUIRED:
            if not headers.get("ce-" + name):
                raise InvalidEvent(missing_message(name) + f" (binary mode: header ce-{name})")
        if headers["ce-specversion"] != "1.0":
            raise InvalidEvent(f"ce-specversion {headers['ce-specversion']!r} is not supported; send \"1.0\"")
        if body and (not media or _is_json(media)):
            try:
                _decode(body)  # the SDK would quietly keep malformed JSON as text
            except msgspec.DecodeError as exc:
                raise InvalidEvent(
                    f"the body is not valid JSON ({exc}) but its Content-Type is {media or 'unset (JSON)'}; "
                    "fix the JSON or send the right Content-Type"
                ) from None
        for name, value in headers.items():
            if name.startswith("ce-"):
                _check_percent_encoding(name, value)
        if "ce-time" in headers:  # the SDK's own complaints ("Expected 4 digits") say nothing of what to send
            _parse_time({"time": unquote(headers["ce-time"])}, name="ce-time")
        ce = {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}
        try:
            event = from_binary(HTTPMessage(headers=ce, body=body), _FORMAT, CloudEvent)
        except (BaseCloudEventException, ValueError, TypeError) as exc:
            raise InvalidEvent(f"the CloudEvent is not valid: {exc}") from None
        assert isinstance(event, CloudEvent)
        check_text(event.get_attributes())  # header values arrive percent-encoded: %00 is a NUL
        return event


def _check_percent_encoding(name: str, value: str) -> None:
    """InvalidEvent unless the header's %-escapes decode as UTF-8: the SDK decodes them lossily
    (``%ff`` becomes U+FFFD), and two different ids would become one."""
    try:
        unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(
            f"header {name} {value!r} is not percent-encoded UTF-8; encode the value as UTF-8, "
            "then %-escape its bytes (e.g. \"caf%C3%A9\" for \"café\")"
        ) from None


def event_from_fields(fields: Mapping[str, str]) -> CloudEvent:
    """A CloudEvent whose attributes are the fields of a message (Redis entries), ``data`` its data
    (``data_base64``: bytes, as in structured mode)."""
    attrs: dict[str, Any] = {k: v for k, v in fields.items() if k not in ("data", "data_base64")}
    data: Any = fields.get("data")
    ct = _media_type(str(attrs.get("datacontenttype", "application/json")))
    if "data_base64" in fields:
        if data is not None:
            raise InvalidEvent("the entry has both a 'data' and a 'data_base64' field; send one")
        try:
            data = base64.b64decode(fields["data_base64"], validate=True)
        except ValueError:
            raise InvalidEvent("the 'data_base64' field is not base64") from None
    elif data is not None and _is_json(ct):
        try:
            data = _decode(data)
        except msgspec.DecodeError as exc:
            set_as = f"is {attrs['datacontenttype']}" if "datacontenttype" in attrs else "is unset (JSON)"
            raise InvalidEvent(
                f"the 'data' field is not valid JSON ({exc}) but the entry's datacontenttype {set_as}; "
                "fix the JSON, or add a datacontenttype field (e.g. text/plain) for data that is no JSON"
            ) from None
    check_required(attrs)
    _parse_time(attrs)
    return make_event(attrs, data)
