"""The event endpoints: ingest (CloudEvents, S3 notifications, signed webhooks),
triggers, and the dead-letter store.  The work is ``spanfaas.events``'; this
module only speaks HTTP for it.

Webhooks live outside ``/v1`` (``POST /hooks/<name>``): their senders cannot
send an API token, the HMAC signature is their authentication.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

import msgspec
from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response

from spanfaas.errors import InvalidRequest, NotFound, SpanfaasError, ValueRefused
from spanfaas.events import CloudEvent, Published
from spanfaas.gateway.invoke import read_body, too_large
from spanfaas.gateway.listing import decode_cursor, encode_cursor
from spanfaas.model import ErrorInfo, Trigger, TriggerRecord, pattern_problem

if TYPE_CHECKING:
    from spanfaas.gateway.api import Endpoint
    from spanfaas.gateway.app import Gateway

__all__ = ["event_endpoints"]

_encode = msgspec.json.Encoder().encode


# -- wire messages -----------------------------------------------------------------------


class PublishedList(Struct):
    """What became of each event of the request (202: its invocations are queued; an event
    of a batch the store refused has an ``error``, and the others are queued)."""

    events: list[Published]


class TriggerRequest(Struct, forbid_unknown_fields=True):
    function: Annotated[str, Meta(min_length=1)]
    trigger: Trigger


class TriggerList(Struct):
    triggers: list[TriggerRecord]


class DeadLetterView(Struct):
    id: str
    """The id of the invocation that gave up (replay it with this id)."""
    function: str
    """Empty for a dead letter that cannot be replayed, kept to be read: a stream's entry that
    was no event (error type InvalidEvent; its raw fields in ``event``), or one the store refused
    for a value of its data, kept without it (its error says why, and names the function)."""
    proxy: str
    trigger: str
    event: dict[str, Any]
    """The CloudEvent's attributes."""
    error: ErrorInfo | None
    attempts: int
    created_at: float
    failed_at: float


class DeadLetterList(Struct):
    dead_letters: list[DeadLetterView]
    next: str | None = None
    """The link to the next page (this query with a cursor); null on the last page."""


class Replayed(Struct):
    dead_letter: str
    invocation: str
    """The new invocation's id."""


def _json(obj: Any, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json")


# -- ingest ---------------------------------------------------------------------------------


async def _ingest(
    gw: Gateway, request: Request, kind: str, translate: Callable[[dict[str, str], bytes], list[CloudEvent]],
    batch: Callable[[dict[str, str]], bool] = lambda headers: False,
) -> Response:
    """Read, translate and publish one request; every refusal counts as rejected.

    An event the store refuses: in a ``batch`` (a CloudEvents batch, the records of an S3
    notification), its ``error`` in the 202, the others queued; sent alone, a 422."""
    metrics = gw.events.metrics
    metrics.received.labels(kind).inc()
    limit = gw.settings.events.max_body
    try:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large("event body", "events.max_body", limit, int(length))
        body = await read_body(request.receive, limit, "event body", "events.max_body")
        headers = dict(request.headers.items())
        events = translate(headers, body)
    except SpanfaasError:
        metrics.rejected.labels(kind).inc()
        raise
    published = await gw.events.publish(kind, events)
    if not batch(headers) and (refused := next((p.error for p in published if p.error is not None), None)):
        raise ValueRefused(refused["detail"])
    return _json(PublishedList(events=published), 202)


async def post_events(gw: Gateway, request: Request) -> Response:
    proxy = gw.events.cloudevents
    return await _ingest(gw, request, "cloudevents", proxy.translate, proxy.batched)


async def post_s3(gw: Gateway, request: Request) -> Response:
    return await _ingest(gw, request, "s3", gw.events.s3.translate, lambda headers: True)


async def post_webhook(gw: Gateway, request: Request) -> Response:
    name = request.path_params["hook"]
    hook = gw.events.webhooks.get(name)
    if hook is None:  # received and rejected, as every refusal (rejected never outgrows received)
        gw.events.metrics.received.labels("webhook").inc()
        gw.events.metrics.rejected.labels("webhook").inc()
        configured = ", ".join(sorted(gw.events.webhooks)) or "none"
        raise NotFound(f"no webhook named '{name}'; configured in [[events.webhooks]]: {configured}")
    return await _ingest(gw, request, "webhook", hook.translate)


# -- triggers ----------------------------------------------------------------------------------


def _function_filter(request: Request) -> str | None:
    """The ``function`` a listing is narrowed to; None when not asked. An empty value is
    refused: the caller meant a function and named none."""
    function = request.query_params.get("function")
    if function == "":
        raise InvalidRequest(
            "function= is empty; name a deployed function, or leave the parameter out for every function's"
        )
    return function


async def list_triggers(gw: Gateway, request: Request) -> Response:
    function = _function_filter(request)
    if function is not None:
        # A function not deployed has no triggers (rm removes them): a typo is said, not an empty list.
        await gw.registry.require(function)
    return _json(TriggerList(triggers=await gw.events.list_triggers(function)))


async def add_trigger(gw: Gateway, request: Request) -> Response:
    body = await read_body(request.receive, 65536, "request body", None)
    try:
        req = msgspec.json.decode(body, type=TriggerRequest)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid trigger: {_trigger_problem(str(exc), body)}") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if problem := pattern_problem(req.trigger):
        raise InvalidRequest(f"invalid trigger: {problem[1]}")
    record = await gw.events.add_trigger(req.function, req.trigger)
    return _json(record, 201)


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_TRIGGER_EXAMPLE = 'send e.g. {"function": "thumbnail", "trigger": {"source": "s3://photos", "subject": "*.jpg"}}'


def _trigger_problem(message: str, body: bytes) -> str:
    """What is wrong with a trigger request, in its own terms: the trigger's own checks as
    they are, the values a field takes, the example only when the request's shape is wrong."""
    at = _AT.search(message)
    path, text = (at.group(1), message[: at.start()]) if at else ("", message)
    if path == "trigger" and not text.startswith(("Expected", "Object")):  # Trigger.__post_init__ said what to fix
        return text
    field = path.removeprefix("trigger.")
    sent = msgspec.json.decode(body).get("trigger", {}).get(field) if path.startswith("trigger.") else None
    if text.startswith("Invalid enum value"):
        info = next(f.type for f in msgspec.inspect.type_info(Trigger).fields if f.name == field)  # type: ignore[attr-defined]
        allowed = ", ".join(repr(v) for v in sorted(info.values))
        return f"{path} {sent!r} is not known; use one of: {allowed}"
    if path == "trigger.name" and "matching regex" in text:
        return (f"{path} {sent!r} must be lowercase letters, digits, '.', '_' or '-', starting with a letter "
                'or digit (at most 63), e.g. "nightly"')  # fmt: skip
    return f"{text}{f' (in {path})' if path else ''}; {_TRIGGER_EXAMPLE}"


async def remove_trigger(gw: Gateway, request: Request) -> Response:
    await gw.events.remove_trigger(request.path_params["id"])
    return Response(status_code=204)


# -- dead letters ----------------------------------------------------------------------------------


async def list_dead_letters(gw: Gateway, request: Request) -> Response:
    q = request.query_params
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise InvalidRequest(f"limit={q.get('limit')!r} is not a number; use e.g. limit=100") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest(f"limit={limit} is out of range; use 1 to 1000")
    cursor = q.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    letters = await gw.events.dead_letters(_function_filter(request), limit, after)
    views = [
        DeadLetterView(
            id=d.id, function=d.function, proxy=d.event.proxy, trigger=d.event.trigger, event=d.event.attributes,
            error=d.error, attempts=d.attempts, created_at=d.created_at, failed_at=d.failed_at,
        )  # fmt: skip
        for d in letters
    ]
    next_link = None
    if len(letters) == limit:  # maybe more: the next page starts after the last of this one
        last = letters[-1]
        next_link = f"{request.url.path}?{urlencode({**dict(q), 'cursor': encode_cursor((last.failed_at, last.id))})}"
    return _json(DeadLetterList(dead_letters=views, next=next_link))


async def replay_dead_letter(gw: Gateway, request: Request) -> Response:
    id = request.path_params["id"]
    record = await gw.events.replay(id)
    return _json(Replayed(dead_letter=id, invocation=record.id), 202)


async def remove_dead_letter(gw: Gateway, request: Request) -> Response:
    await gw.events.remove_dead_letter(request.path_params["id"])
    return Response(status_code=204)


# -- the table -------------------------------------------------------------------------------------


def event_endpoints() -> list[Endpoint]:
    from spanfaas.gateway.api import Endpoint, Param

    ingest_errors = (400, 401, 403, 413, 422)
    return [
        Endpoint("POST", "/v1/events", post_events,
                 "Publish CloudEvents (binary or structured mode, or a batch); matching triggers start functions",
                 tag="events", body=("application/cloudevents+json", "application/cloudevents-batch+json", "*/*"),
                 params=(Param("ce-id", "header", "binary mode: the event's id (with ce-source, ce-type, ce-specversion)"),),
                 status=202, response=PublishedList, errors=ingest_errors),
        Endpoint("POST", "/v1/events/s3", post_s3,
                 "Publish an S3/MinIO bucket notification: one CloudEvent per record",
                 tag="events", body=("application/json",), status=202, response=PublishedList, errors=ingest_errors),
        Endpoint("POST", "/hooks/{hook:str}", post_webhook,
                 "A webhook signed with its secret (X-Hub-Signature-256: sha256=HMAC); no API token",
                 scope=None, tag="events", body=("application/json", "application/x-www-form-urlencoded"),
                 params=(Param("hook", "path", "The hook's name ([[events.webhooks]])", required=True),
                         Param("X-Hub-Signature-256", "header", "sha256=<hex HMAC-SHA256 of the body>", required=True),
                         Param("X-GitHub-Event", "header", "The event type", required=True)),
                 status=202, response=PublishedList, errors=(400, 403, 404, 413, 422),
                 error_notes={403: "The X-Hub-Signature-256 header is missing, or does not match the hook's secret "
                                   "(a problem of type bad-signature; no WWW-Authenticate: the signature is the credential)"}),
        Endpoint("GET", "/v1/triggers", list_triggers, "Triggers in force (from manifests and the API)",
                 tag="events", params=(Param("function", "query", "only this function's (not empty: leave it out for every function's; "
                                             "one not deployed is a 404)"),),
                 response=TriggerList, errors=(401, 403, 404)),
        Endpoint("POST", "/v1/triggers", add_trigger, "Add a trigger to a function",
                 scope="deploy", tag="events", body=TriggerRequest, status=201, response=TriggerRecord,
                 errors=(400, 401, 403, 404, 409),
                 error_notes={409: "The function has a trigger of that name already (the problem names its id)"}),
        Endpoint("DELETE", "/v1/triggers/{id:str}", remove_trigger,
                 "Remove a trigger added through the API (manifest triggers: edit the manifest)",
                 scope="deploy", tag="events", params=(Param("id", "path", "The trigger's id", required=True),),
                 status=204, errors=(401, 403, 404, 409)),
        Endpoint("GET", "/v1/events/dlq", list_dead_letters, "Event invocations that failed every attempt",
                 scope="deploy", tag="events",
                 params=(Param("function", "query", "only this function's (not empty: leave it out for every function's)"),
                         Param("limit", "query", "at most this many (1-1000, default 100)", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                         Param("cursor", "query", "where the page starts: from the next link of the page before")),
                 response=DeadLetterList, errors=(400, 401, 403)),
        Endpoint("POST", "/v1/events/dlq/{id:str}/replay", replay_dead_letter,
                 "Queue a dead letter again (a new invocation); it leaves the dead-letter store",
                 scope="deploy", tag="events", params=(Param("id", "path", "The dead letter's id", required=True),),
                 status=202, response=Replayed, errors=(401, 403, 404, 422)),
        Endpoint("DELETE", "/v1/events/dlq/{id:str}", remove_dead_letter,
                 "Remove a dead letter for good (its event is not run)",
                 scope="deploy", tag="events", params=(Param("id", "path", "The dead letter's id", required=True),),
                 status=204, errors=(401, 403, 404)),
    ]  # fmt: skip
