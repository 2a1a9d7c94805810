"""Webhooks signed GitHub-style: ``POST /hooks/<name>``.

The sender signs the raw body with the hook's secret and sends
``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``; the signature is checked
in constant time before the body is even parsed.  The event type comes from
a header (``X-GitHub-Event``), the event id from the delivery header
(``X-GitHub-Delivery``), so a redelivery of the same hook call is recognized.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import msgspec

from spanfaas.config import WebhookConfig
from spanfaas.events.base import (
    BadSignature,
    CloudEvent,
    InvalidEvent,
    decode_json,
    digest_id,
    make_event,
)

__all__ = ["WebhookProxy", "sign"]

SIGNATURE_HEADER = "x-hub-signature-256"
_PREFIX = "sha256="


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value for ``body`` (what a sender computes)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return _PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


class WebhookProxy:
    kind = "webhook"

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.name = config.name
        self._key = config.secret.encode()
        self._source = config.source or f"webhook/{config.name}"
        self._event_header = config.event_header.lower()
        self._id_header = config.id_header.lower()

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """BadSignature unless the body carries this hook's signature."""
        given = headers.get(SIGNATURE_HEADER, "")
        if not given:
            raise BadSignature(
                f"webhook '{self.name}' needs an X-Hub-Signature-256 header: "
                "sha256=<hex HMAC-SHA256 of the raw body, keyed with the hook's secret>"
            )
        expected = sign(self._key, body)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            raise BadSignature(
                f"the X-Hub-Signature-256 of this request does not match the secret of webhook '{self.name}'; "
                "check the secret configured at the sender, and that the body is sent unchanged"
            )

    def translate(self, headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
        self.verify(headers, body)
        kind = headers.get(self._event_header, "").strip()
        if not kind:
            raise InvalidEvent(f"webhook '{self.name}' needs the event type in the {self.config.event_header} header")
        data = _payload(headers.get("content-type", ""), body)
        type_ = self.config.type_prefix + kind
        if isinstance(data, dict) and isinstance(data.get("action"), str) and data["action"]:
            type_ += "." + data["action"]
        attrs: dict[str, Any] = {
            "specversion": "1.0",
            "id": headers.get(self._id_header, "").strip() or digest_id(kind.encode(), body),
            "source": self._source,
            "type": type_,
            "time": datetime.now(UTC),
            "datacontenttype": "application/json",
        }
        repo = data.get("repository") if isinstance(data, dict) else None
        if isinstance(repo, dict) and isinstance(repo.get("full_name"), str) and repo["full_name"]:
            attrs["subject"] = repo["full_name"]
        return [make_event(attrs, data)]


def _payload(content_type: str, body: bytes) -> Any:
    """The JSON body (GitHub's ``application/json``) or its ``payload=`` form field."""
    if content_type.partition(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode(), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise InvalidEvent("the form body is not valid application/x-www-form-urlencoded") from None
        if "payload" not in form:
            raise InvalidEvent("a form-encoded webhook must carry the JSON in its 'payload' field")
        body = form["payload"][0].encode()
    if not body:
        return None
    try:
        return decode_json(body)
    except msgspec.DecodeError as exc:
        raise InvalidEvent(f"the webhook body is not valid JSON: {exc}") from None
