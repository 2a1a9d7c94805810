"""The HTTP proxies' translation, message by message (no server needed)."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

import pytest
from events_helpers import SECRET

from spanfaas.config import WebhookConfig
from spanfaas.events import BadSignature, InvalidEvent
from spanfaas.events.base import attributes_of, structured
from spanfaas.events.cloudevents_http import CloudEventsProxy, event_from_fields
from spanfaas.events.s3 import S3Proxy
from spanfaas.events.webhook import WebhookProxy, sign

CE = {"specversion": "1.0", "id": "e-1", "source": "/orders", "type": "com.example.order.created"}
STRUCTURED = {"content-type": "application/cloudevents+json"}


def binary(**extra: str) -> dict[str, str]:
    return {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/orders", "ce-type": "com.example.order.created",
            "content-type": "application/json", **extra}  # fmt: skip


# -- CloudEvents over HTTP -----------------------------------------------------------------


def test_structured_mode() -> None:
    body = json.dumps({**CE, "subject": "o/1", "time": "2024-05-01T12:00:00Z", "shop": "berlin", "data": {"n": 1}})
    [ev] = CloudEventsProxy().translate(STRUCTURED, body.encode())
    attrs = attributes_of(ev)
    assert attrs["id"] == "e-1" and attrs["subject"] == "o/1" and attrs["shop"] == "berlin"
    assert attrs["time"] == "2024-05-01T12:00:00Z"
    assert ev.get_data() == {"n": 1}
    assert json.loads(structured(ev))["data"] == {"n": 1}


@pytest.mark.parametrize("nulls", [{"unsetextension": None}, {"subject": None}, {"time": None},
                                   {"subject": None, "dataschema": None, "datacontenttype": None, "unsetextension": None}])
def test_an_attribute_sent_as_null_is_absent(nulls: dict[str, None]) -> None:
    """CloudEvents JSON Format 1.0.2, section 2.2 (Type System Mapping): "Unset attributes MAY
    be encoded to the JSON value of null. When decoding attributes and a null value is encountered,
    it MUST be treated as the equivalent of unset or omitted" -- and its examples in 2.3 and 3.2
    send ``"subject": null``, ``"time": null`` and ``"unsetextension": null``.  An extension sent as
    null was already left out (as it must be), but a null ``subject``, ``time``, ``datacontenttype``
    or ``dataschema`` made the event a 400.  Each is now absent, as if not sent (a ``time`` not
    sent is the time the event was received, as ever)."""
    proxy = CloudEventsProxy()
    [ev] = proxy.translate(STRUCTURED, json.dumps({**CE, "shop": "berlin", **nulls, "data": {"n": 1}}).encode())
    [unsent] = proxy.translate(STRUCTURED, json.dumps({**CE, "shop": "berlin", "data": {"n": 1}}).encode())
    attrs, expected = attributes_of(ev), attributes_of(unsent)
    assert attrs.keys() == expected.keys() and attrs.pop("time") and attrs == {**CE, "shop": "berlin"}, attrs
    doc = json.loads(structured(ev))
    assert not (set(nulls) - {"time"}) & set(doc) and doc["time"] and doc["data"] == {"n": 1}, doc


def test_binary_mode_with_percent_encoded_header() -> None:
    [ev] = CloudEventsProxy().translate(binary(**{"ce-subject": "caf%C3%A9"}), b'{"n": 2}')
    attrs = attributes_of(ev)
    assert attrs["subject"] == "café" and attrs["datacontenttype"] == "application/json"
    assert ev.get_data() == {"n": 2}


def test_binary_data_and_data_base64_round_trip() -> None:
    [ev] = CloudEventsProxy().translate(binary(**{"content-type": "application/octet-stream"}), b"\xff\x00")
    doc = json.loads(structured(ev))
    assert base64.b64decode(doc["data_base64"]) == b"\xff\x00"
    [back] = CloudEventsProxy().translate(STRUCTURED, structured(ev))
    assert back.get_data() == b"\xff\x00"


def test_batch_mode() -> None:
    body = json.dumps([{**CE, "id": str(i)} for i in range(3)]).encode()
    events = CloudEventsProxy().translate({"content-type": "application/cloudevents-batch+json"}, body)
    assert [e.get_id() for e in events] == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({k: v for k, v in CE.items() if k != "source"}, r"^event 1 of the batch has no 'source' attribute"),
        ({**CE, "specversion": "0.3"}, r"^event 1 of the batch: specversion '0.3' is not supported"),
        ({**CE, "time": "yesterday"}, r"^event 1 of the batch: time 'yesterday' is not an RFC 3339"),
        ({**CE, "Bad-Name": 1}, r"^event 1 of the batch is not valid: .*lowercase"),
    ],
)
def test_a_bad_event_of_a_batch_is_named_by_its_index(bad: dict[str, object], match: str) -> None:
    body = json.dumps([CE, bad, {**CE, "id": "e-3"}]).encode()
    with pytest.raises(InvalidEvent, match=match):
        CloudEventsProxy().translate({"content-type": "application/cloudevents-batch+json"}, body)


@pytest.mark.parametrize("value", [5, None, ["e-1"]])
def test_a_required_attribute_of_the_wrong_type_says_so(value: object) -> None:
    """An id of 5 is not a missing id: the message shows what was sent and what to send."""
    body = json.dumps({**CE, "id": value}).encode()
    with pytest.raises(InvalidEvent, match=re.escape(f"'id' must be a non-empty string, got {json.dumps(value)}")):
        CloudEventsProxy().translate(STRUCTURED, body)


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_structured_missing_required_attribute(missing: str) -> None:
    doc = {k: v for k, v in CE.items() if k != missing}
    with pytest.raises(InvalidEvent, match=f"'{missing}'"):
        CloudEventsProxy().translate(STRUCTURED, json.dumps(doc).encode())


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
def test_binary_missing_required_header(missing: str) -> None:
    headers = {k: v for k, v in binary().items() if k != f"ce-{missing}"}
    with pytest.raises(InvalidEvent, match=f"ce-{missing}"):
        CloudEventsProxy().translate(headers, b"{}")


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        (STRUCTURED, b'{"id": ', "not valid JSON"),
        (STRUCTURED, b"[1, 2]", "JSON object"),
        (STRUCTURED, json.dumps({**CE, "specversion": "0.3"}).encode(), "not supported"),
        (STRUCTURED, json.dumps({**CE, "time": "yesterday"}).encode(), "RFC 3339"),
        (STRUCTURED, json.dumps({**CE, "Bad-Name": 1}).encode(), "lowercase"),
        (binary(), b'{"n": ', "not valid JSON"),
        ({"content-type": "application/json"}, b"{}", "carries no CloudEvent"),
        ({"content-type": "application/cloudevents-batch+json"}, b"{}", "JSON array"),
    ],
)
def test_malformed_cloudevents(headers: dict[str, str], body: bytes, match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        CloudEventsProxy().translate(headers, body)


@pytest.mark.parametrize(
    ("headers", "body", "match"),
    [
        (STRUCTURED, json.dumps({**CE, "id": "e\u00001"}).encode(), "'id' contains the control character U\\+0000"),
        (STRUCTURED, json.dumps({**CE, "subject": "line 1\nline 2"}).encode(), "'subject' contains the control character U\\+000A"),
        ({"content-type": "application/cloudevents-batch+json"}, json.dumps([CE, {**CE, "shop": "b\u0085"}]).encode(),
         "event 1 of the batch's 'shop' contains the control character U\\+0085"),
        (binary(**{"ce-id": "e%001"}), b"{}", "'id' contains the control character U\\+0000"),  # headers are percent-decoded
    ],
    ids=["structured", "newline", "batch", "binary"],
)  # fmt: skip
def test_control_characters_in_attributes_are_refused(headers: dict[str, str], body: bytes, match: str) -> None:
    """CloudEvents 1.0 forbids U+0000-U+001F and U+007F-U+009F in attribute values.  They were
    accepted; a NUL in an id or source then failed the PostgreSQL store when the event was
    de-duplicated: a 503 'retry' for ever over HTTP, and a Redis stream stuck on the entry."""
    with pytest.raises(InvalidEvent, match=match):
        CloudEventsProxy().translate(headers, body)
    with pytest.raises(InvalidEvent, match="'id' contains the control character"):
        event_from_fields({**CE, "id": "e\x001"})  # a Redis entry of CloudEvent fields


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T12:00:00Z", "2024-05-01T12:00:00", "2024-05-01"])
def test_a_bad_time_says_what_to_send_in_every_mode(value: str) -> None:
    """Binary mode said what the SDK's parser thought ("Expected 4 digits, got 'yest'", "month must
    be in 1..12"), and a time without its zone offset, in any mode, "Attribute 'time' must be timezone aware"."""
    example = re.escape('send e.g. "2024-05-01T12:00:00Z"')
    with pytest.raises(InvalidEvent, match=f"^ce-time '{value}' is not an RFC 3339 timestamp.*{example}"):
        CloudEventsProxy().translate(binary(**{"ce-time": quote(value)}), b"{}")
    with pytest.raises(InvalidEvent, match=f"^time '{value}' is not an RFC 3339 timestamp.*{example}"):
        CloudEventsProxy().translate(STRUCTURED, json.dumps({**CE, "time": value}).encode())
    with pytest.raises(InvalidEvent, match=f"^time '{value}' is not an RFC 3339 timestamp.*{example}"):
        event_from_fields({**CE, "time": value})  # a Redis entry


DEEP = b"[" * 20_000 + b"]" * 20_000
"""JSON nested past what the decoder takes: its RecursionError was a 500 ("the gateway failed unexpectedly")."""


def test_json_nested_too_deeply_is_an_invalid_event() -> None:
    ce = json.dumps(CE).encode()[:-1] + b', "data": ' + DEEP + b"}"
    for translate in (
        lambda: CloudEventsProxy().translate(STRUCTURED, ce),
        lambda: CloudEventsProxy().translate({"content-type": "application/cloudevents-batch+json"}, DEEP),
        lambda: CloudEventsProxy().translate(binary(), DEEP),
        lambda: HOOK.translate({"x-hub-signature-256": sign(SECRET, DEEP), "x-github-event": "push"}, DEEP),
        lambda: S3Proxy().translate({}, DEEP),
    ):
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            translate()


# -- webhooks ----------------------------------------------------------------------------------

HOOK = WebhookProxy(WebhookConfig(name="github", secret=SECRET))
PUSH = json.dumps({"ref": "refs/heads/main", "repository": {"full_name": "octo/hello"}}).encode()


def test_signature_matches_github_example() -> None:
    # The example from GitHub's documentation on validating webhook deliveries.
    assert sign(SECRET, b"Hello, World!") == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_webhook_signed() -> None:
    headers = {"x-hub-signature-256": sign(SECRET, PUSH), "x-github-event": "push", "x-github-delivery": "d-1",
               "content-type": "application/json"}  # fmt: skip
    [ev] = HOOK.translate(headers, PUSH)
    attrs = attributes_of(ev)
    assert (attrs["id"], attrs["source"], attrs["type"], attrs["subject"]) == ("d-1", "webhook/github", "com.github.push", "octo/hello")
    assert ev.get_data()["ref"] == "refs/heads/main"


def test_webhook_action_and_form_encoding() -> None:
    body = ("payload=" + quote(json.dumps({"action": "opened", "number": 7}))).encode()
    headers = {"x-hub-signature-256": sign(SECRET, body), "x-github-event": "pull_request",
               "content-type": "application/x-www-form-urlencoded"}  # fmt: skip
    [ev] = HOOK.translate(headers, body)
    assert ev.get_type() == "com.github.pull_request.opened" and ev.get_data() == {"action": "opened", "number": 7}
    assert len(ev.get_id()) == 32  # no delivery header: a digest of the body, stable across redeliveries


@pytest.mark.parametrize(
    "signature", [None, "", "sha256=" + "0" * 64, sign("another secret", PUSH), sign(SECRET, PUSH + b" "), "sha1=abc"]
)
def test_webhook_bad_signature(signature: str | None) -> None:
    headers = {"x-github-event": "push"}
    if signature is not None:
        headers["x-hub-signature-256"] = signature
    with pytest.raises(BadSignature) as info:
        HOOK.translate(headers, PUSH)
    assert info.value.status == 403 and "X-Hub-Signature-256" in info.value.message  # no Bearer challenge: test_gateway_events


def test_webhook_needs_event_header_and_json() -> None:
    with pytest.raises(InvalidEvent, match="X-GitHub-Event"):
        HOOK.translate({"x-hub-signature-256": sign(SECRET, PUSH)}, PUSH)
    bad = b'{"ref": '
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        HOOK.translate({"x-hub-signature-256": sign(SECRET, bad), "x-github-event": "push"}, bad)


# -- S3 notifications --------------------------------------------------------------------------


def s3_record(key: str, *, name: str = "ObjectCreated:Put", seq: str = "0055AED6DCD90281E5", bucket: str = "photos") -> dict[str, object]:
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "eu-central-1",
        "eventTime": "2024-05-01T12:00:00.000Z", "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": key, "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": seq}},
    }  # fmt: skip


def test_s3_one_event_per_record() -> None:
    body = json.dumps({"Records": [s3_record("uploads/a+b.jpg"), s3_record("x.txt", name="s3:ObjectRemoved:Delete", seq="01")]})
    events = S3Proxy().translate({}, body.encode())
    assert len(events) == 2
    a = attributes_of(events[0])
    assert (a["source"], a["type"], a["subject"]) == ("s3://photos", "com.amazonaws.s3.ObjectCreated:Put", "uploads/a b.jpg")
    assert a["id"] == "uploads/a b.jpg@0055AED6DCD90281E5#ObjectCreated:Put"
    assert events[0].get_data() == {
        "bucket": "photos", "key": "uploads/a b.jpg", "size": 1024, "etag": "d41d8cd98f00b204e9800998ecf8427e",
        "event_name": "ObjectCreated:Put", "version_id": None, "sequencer": "0055AED6DCD90281E5", "region": "eu-central-1",
    }  # fmt: skip
    assert attributes_of(events[1])["type"] == "com.amazonaws.s3.ObjectRemoved:Delete"  # MinIO's "s3:" prefix dropped


def test_s3_ids_of_two_event_types_for_one_change_differ() -> None:
    """The id was ``<key>@<sequencer>``: an ObjectCreated and an ObjectRemoved of the same
    key and sequencer had one id, and the second was dropped as a duplicate of the first."""
    body = json.dumps({"Records": [s3_record("a.jpg"), s3_record("a.jpg", name="s3:ObjectRemoved:Delete")]})
    created, removed = (attributes_of(e)["id"] for e in S3Proxy().translate({}, body.encode()))
    assert created == "a.jpg@0055AED6DCD90281E5#ObjectCreated:Put" and removed == "a.jpg@0055AED6DCD90281E5#ObjectRemoved:Delete"


def test_s3_key_with_control_characters_is_escaped_in_the_attributes() -> None:
    """S3 keys may hold control characters, CloudEvents attributes may not: the subject and
    id carry them %-escaped, the data the key as it is."""
    [ev] = S3Proxy().translate({}, json.dumps({"Records": [s3_record("a%00b%0A.jpg")]}).encode())
    a = attributes_of(ev)
    assert a["subject"] == "a%00b%0A.jpg" and a["id"] == "a%00b%0A.jpg@0055AED6DCD90281E5#ObjectCreated:Put"
    assert ev.get_data()["key"] == "a\x00b\n.jpg"  # type: ignore[index]


def test_s3_minio_shape_and_sns_envelope() -> None:
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": "photos/a.jpg", "Records": [s3_record("a.jpg", name="s3:ObjectCreated:Put")]}
    assert len(S3Proxy().translate({}, json.dumps(minio).encode())) == 1
    sns = {"Type": "Notification", "Message": json.dumps({"Records": [s3_record("b.jpg")]})}
    [ev] = S3Proxy().translate({}, json.dumps(sns).encode())
    assert ev.get_subject() == "b.jpg"
    assert S3Proxy().translate({}, b'{"Service": "Amazon S3", "Event": "s3:TestEvent"}') == []


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"Records": [', "not valid JSON"),
        (b"{}", "no 'Records'"),
        (b'{"Records": {}}', "list"),
        (b'{"Records": [{"s3": {}}]}', "eventName"),
        (b'{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]}', "s3.object.key"),
    ],
)
def test_s3_malformed(body: bytes, match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        S3Proxy().translate({}, body)


# -- Redis Streams entries (translation only: the reader is tested against redis-server) ----


def test_a_redis_entry_is_a_cloudevent_only_with_a_specversion_field() -> None:
    """docs/events.md: an entry with ``specversion`` is the event in its fields; id, source and
    type without it are wrapped like any other entry, the fields its data."""
    from prometheus_client import CollectorRegistry

    from spanfaas.config import RedisStreamConfig
    from spanfaas.events.metrics import EventMetrics
    from spanfaas.events.redis_streams import RedisStreamSource

    source = RedisStreamSource(RedisStreamConfig(name="orders", stream="orders"), EventMetrics(CollectorRegistry()), None)  # type: ignore[arg-type]
    fields = {"id": "ce-1", "source": "shop", "type": "com.shop.order", "data": '{"a": 1}'}
    attrs = attributes_of(source.translate("1700000000000-0", {**fields, "specversion": "1.0"}))
    assert (attrs["id"], attrs["source"], attrs["type"]) == ("ce-1", "shop", "com.shop.order")
    wrapped = source.translate("1700000000000-1", fields)
    attrs = attributes_of(wrapped)
    assert (attrs["id"], attrs["source"], attrs["type"]) == ("1700000000000-1", "redis/orders", "dev.spanfaas.redis.entry")
    assert wrapped.get_data() == fields
    with pytest.raises(InvalidEvent, match="no 'id' attribute"):  # a CloudEvent by its specversion, but no event
        source.translate("1700000000000-2", {"specversion": "1.0", "source": "shop", "type": "t"})


def test_a_redis_entry_with_text_data_says_to_name_its_content_type() -> None:
    """A Redis entry of CloudEvent fields with data 'hello' and no datacontenttype was kept as
    a dead letter saying only "the 'data' field is not valid JSON: JSON is malformed: invalid
    character (byte 0)": not that an unset datacontenttype means JSON, nor how to send text.
    (With datacontenttype text/plain the same entry is delivered.)"""
    with pytest.raises(InvalidEvent) as info:
        event_from_fields({**CE, "data": "hello"})
    message = str(info.value)
    assert "the 'data' field is not valid JSON" in message and "datacontenttype is unset (JSON)" in message, message
    assert "add a datacontenttype field (e.g. text/plain)" in message, message
    with pytest.raises(InvalidEvent, match="datacontenttype is application/json"):
        event_from_fields({**CE, "datacontenttype": "application/json", "data": "{oops"})
    assert attributes_of(event_from_fields({**CE, "datacontenttype": "text/plain", "data": "hello"}))["datacontenttype"] == "text/plain"
