"""The OpenAPI document built from an endpoint table (openapi.py)."""

from __future__ import annotations

from spanfaas.gateway.api import Endpoint
from spanfaas.gateway.openapi import build_openapi


async def _handler() -> None:
    raise AssertionError("not called: only documented")


def test_an_endpoints_own_note_for_a_503_keeps_the_retry_after_header() -> None:
    # The header is sent by the error (problems.py), whatever the status means on this
    # endpoint: a note that says what a 503 means here must not drop it from the document.
    noted = Endpoint("POST", "/v1/noted", _handler, "noted", errors=(429, 503),
                     error_notes={503: "The site is draining: try another", 429: "Too many at once here"})  # fmt: skip
    plain = Endpoint("POST", "/v1/plain", _handler, "plain", errors=(429, 503))
    doc = build_openapi([noted, plain])
    for path in ("/v1/noted", "/v1/plain"):
        responses = doc["paths"][path]["post"]["responses"]
        assert responses["503"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}, path
        assert responses["503"]["headers"]["Retry-After"]["required"] is False, path
        assert responses["429"]["headers"]["Retry-After"]["required"] is True, path
    responses = doc["paths"]["/v1/noted"]["post"]["responses"]
    assert responses["503"]["description"] == "The site is draining: try another"
    assert responses["429"]["description"] == "Too many at once here"
