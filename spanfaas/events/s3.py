"""S3 bucket notifications in the AWS/MinIO JSON format (``POST /v1/events/s3``).

One notification carries ``Records``; each becomes one CloudEvent:

- ``source`` ``s3://<bucket>``, ``subject`` the object key (URL-decoded; control
  characters, which CloudEvents attributes may not hold, %-escaped),
- ``type`` ``com.amazonaws.s3.<event name>`` (``com.amazonaws.s3.ObjectCreated:Put``),
- ``id`` ``<key>@<sequencer>#<event name>``: the ``sequencer`` orders the changes of a key,
  the event name tells apart events that share one (an ObjectCreated and an ObjectRemoved
  are never duplicates of each other),
- ``data`` ``{bucket, key, size, etag, event_name, version_id, sequencer, region}``.

MinIO's webhook target posts exactly this (its ``auth_token`` becomes the
bearer token); an SNS ``Notification`` envelope around it is unwrapped.
AWS's ``s3:TestEvent`` carries no records and starts nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

import msgspec
from dateutil.parser import isoparse  # type: ignore[import-untyped]

from spanfaas.events.base import CloudEvent, InvalidEvent, decode_json, digest_id, escape_controls, make_event

__all__ = ["S3Proxy"]

TYPE_PREFIX = "com.amazonaws.s3."


class S3Proxy:
    kind = "s3"

    def translate(self, headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
        doc = _json(body, "the S3 notification")
        if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
            doc = _json(doc["Message"].encode(), "the SNS message")
        if not isinstance(doc, dict):
            raise InvalidEvent("an S3 notification must be a JSON object with a 'Records' list")
        records = doc.get("Records")
        if records is None:
            if doc.get("Event") == "s3:TestEvent":
                return []
            raise InvalidEvent("the S3 notification has no 'Records' list (AWS and MinIO send one)")
        if not isinstance(records, list):
            raise InvalidEvent("'Records' must be a list of S3 event records")
        return [self._record(r, i) for i, r in enumerate(records)]

    @staticmethod
    def _record(rec: Any, i: int) -> CloudEvent:
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise InvalidEvent(f"{where} is not a JSON object")
        name = rec.get("eventName")
        s3 = rec.get("s3")
        if not isinstance(name, str) or not name:
            raise InvalidEvent(f"{where} has no 'eventName' (e.g. \"s3:ObjectCreated:Put\")")
        if not isinstance(s3, dict) or not isinstance(s3.get("bucket"), dict) or not isinstance(s3.get("object"), dict):
            raise InvalidEvent(f"{where} has no 's3.bucket' and 's3.object'")
        bucket, obj = s3["bucket"].get("name"), s3["object"]
        raw_key = obj.get("key")
        if not isinstance(bucket, str) or not bucket or not isinstance(raw_key, str) or not raw_key:
            raise InvalidEvent(f"{where} needs 's3.bucket.name' and 's3.object.key'")
        key = unquote_plus(raw_key)  # keys arrive URL-encoded
        event_name = name.removeprefix("s3:")
        sequencer = str(obj.get("sequencer") or "")
        data = {
            "bucket": bucket,
            "key": key,
            "size": obj.get("size"),
            "etag": str(obj.get("eTag") or obj.get("etag") or "") or None,
            "event_name": event_name,
            "version_id": obj.get("versionId"),
            "sequencer": sequencer or None,
            "region": rec.get("awsRegion"),
        }
        subject = escape_controls(key)  # CloudEvents allows no control characters in attributes; S3 keys may hold them
        attrs: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"{subject}@{sequencer}#{event_name}" if sequencer else digest_id(msgspec.json.encode(rec)),
            "source": f"s3://{bucket}",
            "type": TYPE_PREFIX + event_name,
            "subject": subject,
            "datacontenttype": "application/json",
        }
        when = rec.get("eventTime")
        if isinstance(when, str) and when:
            try:
                attrs["time"] = isoparse(when)
            except ValueError:
                raise InvalidEvent(f"{where}: eventTime {when!r} is not an ISO 8601 timestamp") from None
        return make_event(attrs, data)


def _json(body: bytes, what: str) -> Any:
    try:
        return decode_json(body)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"{what} is not valid JSON: {exc}") from None
