"""The OpenAPI 3.1 document, generated from the endpoint table and the wire
messages' types, so it covers every route and cannot drift from them."""

from __future__ import annotations

from typing import Any

import msgspec

import spanfaas
from spanfaas.gateway.api import Endpoint
from spanfaas.gateway.views import Problem

__all__ = ["build_openapi"]

_STATUS_TEXT = {
    400: "The request was wrong (the detail says what to fix)",
    401: "No API token, or one that is not valid",
    403: "The token lacks the scope this call needs",
    404: "No such function, invocation or token",
    409: "Conflict: the resource exists, or is in use (the detail names by what)",
    413: "Over a size limit (max_payload or max_bundle)",
    422: "An Idempotency-Key sent again with another payload",
    429: "The function's instances are busy and its queue is full (scaling.max, scaling.queue): retry after Retry-After seconds",
    500: "The function failed (problem has invocation_id, error_type, traceback, logs)",
    502: "The infrastructure failed",
    503: "The infrastructure or the store is unavailable for now (the detail says which): retry after Retry-After",
    504: "The function timed out",
}


_ERROR_HEADERS = {
    401: {"WWW-Authenticate": ({"type": "string"}, 'Bearer realm="spanfaas"', True)},
    429: {"Retry-After": ({"type": "integer"}, "seconds to wait before retrying", True)},
    503: {"Retry-After": ({"type": "integer"}, "seconds to wait before retrying, when the gateway knows", False)},
}

_METHOD_NOT_ALLOWED = {
    "description": "A method the path does not serve (on every path: the methods it serves are its operations)",
    "headers": {"Allow": {"schema": {"type": "string"}, "required": True, "description": "the methods the path serves"}},
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}

_HEAD_TOO_LARGE = {
    "description": "The request line and headers are over 1 MiB (heads.py): the connection is closed",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}
_NOT_HTTP = {
    "description": "The request is not HTTP/1.1 (a request line, a header or a chunk size that cannot be parsed): "
                   "the connection is closed",
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


_NO_STORE = frozenset({"/metrics", "/healthz", "/openapi.json"})
"""Paths answered without the store (``/metrics`` says it is down in a gauge); every other
operation reads or writes it, and answers 503 store-unavailable while it is locked or down."""


def _header(schema: dict[str, Any], description: str, required: bool) -> dict[str, Any]:
    return {"schema": schema, "required": required, "description": description}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def build_openapi(table: list[Endpoint]) -> dict[str, Any]:
    types: list[Any] = [Problem]
    for e in table:
        for t in (e.body, e.response, *(r[1] for r in e.extra_responses.values())):
            if isinstance(t, type) and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    refs = dict(zip(types, schemas))

    paths: dict[str, dict[str, Any]] = {}
    for e in table:
        op: dict[str, Any] = {
            "operationId": f"{e.method.lower()}_{e.openapi_path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "summary": e.summary,
            "tags": [e.tag],
        }
        if e.scope is not None:
            op["security"] = [{"bearer": []}]
            op["description"] = f"Needs scope '{e.scope}' (admin ⊇ deploy ⊇ invoke)."
        else:
            op["security"] = []
        if e.params:
            op["parameters"] = [
                {"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                 "description": p.description, "schema": p.schema}
                for p in e.params
            ]  # fmt: skip
        if isinstance(e.body, type):
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[e.body]}}}
        elif e.body:
            op["requestBody"] = {"content": {ct: {"schema": {}} for ct in e.body}}
        if e.body_note and "requestBody" in op:
            op["requestBody"]["description"] = e.body_note
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK" if e.status < 300 else ("Created" if e.status == 201 else "Done")}
        if isinstance(e.response, type):
            ok["content"] = {"application/json": {"schema": refs[e.response]}}
        elif isinstance(e.response, str):
            ok["content"] = {e.response: {"schema": {}}}
        if e.status == 204:
            ok = {"description": "Done; no content"}
        responses[str(e.status)] = ok
        for code, (text, typ) in e.extra_responses.items():
            responses[str(code)] = {"description": text}
            if typ is not None:
                responses[str(code)]["content"] = {"application/json": {"schema": refs[typ]}}
        for code in (*e.errors, *((503,) if 503 not in e.errors and e.openapi_path not in _NO_STORE else ())):
            responses[str(code)] = {
                "description": e.error_notes.get(code, _STATUS_TEXT[code]),
                "content": {"application/problem+json": {"schema": refs[Problem]}},
            }
            if code in _ERROR_HEADERS:  # sent by the error (problems.py), whatever a note says it means here
                responses[str(code)]["headers"] = {h: _header(*spec) for h, spec in _ERROR_HEADERS[code].items()}
        for code, headers in e.headers.items():
            documented = responses[str(code)].setdefault("headers", {})
            documented.update({h.name: _header({"type": "string"}, h.description, h.required) for h in headers})
        op["responses"] = responses
        paths.setdefault(e.openapi_path, {})[e.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "spanfaas",
            "version": spanfaas.__version__,
            "description": "A self-hostable serverless platform for Python. Errors are RFC 9457 problem documents. "
            "A method a path does not serve answers 405 with Allow (components/responses/MethodNotAllowed); "
            "a path with a trailing slash answers 404, naming the path without it; a request whose line and "
            "headers are over 1 MiB answers 431 and a request that is not HTTP/1.1 400, on every path, before it "
            "is routed (components/responses/RequestHeadTooLarge, NotHttp).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {"MethodNotAllowed": _METHOD_NOT_ALLOWED, "RequestHeadTooLarge": _HEAD_TOO_LARGE, "NotHttp": _NOT_HTTP},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
