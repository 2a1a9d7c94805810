"""The invoke hot path: ``POST /v1/functions/{name}/invoke`` as a raw ASGI endpoint.

It forwards bytes: the body goes to the infrastructure unparsed (JSON is only
validated), the result goes back as the response body with its content type.
The store write of each sync invocation happens later, in a batch.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import msgspec
from starlette.types import Receive, Scope, Send

from spanfaas.clipping import keep_ends
from spanfaas.errors import (
    FunctionNotFound,
    IdempotencyKeyReused,
    InfraError,
    InfraInterrupted,
    InfraUnavailable,
    InvalidPayload,
    InvalidRequest,
    PayloadTooLarge,
    SpanfaasError,
    TooManyRequests,
    ValueRefused,
    format_size,
    format_sizes,
    like_deployed,
)
from spanfaas.model import ErrorInfo, InvocationRecord, InvokeContext, Result
from spanfaas.store import RecordRefused
from spanfaas.gateway.auth import require
from spanfaas.gateway.problems import send_problem
from spanfaas.gateway.views import Queued, is_json

IDEMPOTENCY_KEY_MAX = 255
"""Characters of an ``Idempotency-Key`` (it is stored with the invocation and indexed)."""
LOGS_HEADER_MAX = 8192
"""Bytes of logs sent in ``x-spanfaas-logs`` (asked for with ``x-spanfaas-logs: include``, as
a gateway that placed the call on this site does): within every HTTP client's header limit."""

TRIED_ENTRY_MAX = 1024
"""Bytes of each entry of ``x-spanfaas-tried-reasons`` (a failover's why: a line or two)."""

if TYPE_CHECKING:
    from spanfaas.gateway.app import Gateway

__all__ = ["InvokeEndpoint", "logs_header", "read_body", "too_large", "tried_header"]

_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode
_decode_json = msgspec.json.decode
_encode = msgspec.json.Encoder().encode
_JSON = "application/json"


class ClientDisconnected(InvalidRequest):
    slug, title = "client-disconnected", "Client disconnected"


async def read_body(receive: Receive, limit: int, what: str = "payload", setting: str | None = "max_payload") -> bytes:
    """The whole request body; PayloadTooLarge as soon as it passes ``limit``
    (``setting``: the platform setting that raises it; None for a fixed limit)."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise too_large(what, setting, limit)
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client went away before sending the whole body")
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(what, setting, limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def out_of_range(body: bytes) -> InvalidPayload | None:
    """Why a JSON body the gateway took (its structure checked, ``msgspec.Raw``) cannot be
    decoded for the function: a number out of range (past a float's ±1.8e308, or an integer
    of more than 4,300 digits, Python's limit), which the runtime's decoder refuses before the
    handler runs -- a 500 'the function raised' before.  Decoded whole only where that is
    cheap next to the rest (an async call, queued in the store) or the call failed so."""
    try:
        _decode_json(body)
    except (msgspec.ValidationError, ValueError) as exc:
        return InvalidPayload(
            f"the request body has a number out of range ({exc}): JSON numbers reach the function as Python "
            "floats (at most ±1.8e308) or integers (at most 4,300 digits); send it as a string, or send the "
            "body as bytes with Content-Type: application/octet-stream"
        )
    return None


def too_large(what: str, setting: str | None, limit: int, size: int | None = None) -> PayloadTooLarge:
    if size is None:  # still arriving: how much more is not known
        have, allowed = "is larger", format_size(limit)
    else:
        have, allowed = format_sizes(size, limit)
        have = f"is {have}"
    if setting is None:  # a fixed limit: no setting raises it
        return PayloadTooLarge(f"the {what} {have}; the limit is {allowed} for this request", limit=limit)
    table, _, key = setting.rpartition(".")
    how = (  # a nested setting has no environment variable: only the config file sets it
        f"raise it with {key} in the [{table}] table of the config file (SPANFAAS_CONFIG)"
        if table else f"raise it with SPANFAAS_{setting.upper()}"
    )
    return PayloadTooLarge(f"the {what} {have}; the limit is {setting} = {allowed} ({how})", limit=limit)


class InvokeEndpoint:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.limit = gw.settings.max_payload
        self._json_types: dict[bytes, bool] = {}
        # Invocation ids: a random prefix per process + a counter (cheaper than urandom per call).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def _is_json(self, content_type: bytes) -> bool:
        known = self._json_types.get(content_type)
        if known is None:
            known = is_json(content_type.decode("latin-1"))
            if len(self._json_types) < 256:
                self._json_types[content_type] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        require(scope, "invoke")
        gw = self.gw
        name: str = scope["path_params"]["name"]
        fn = gw.registry.functions.get(name) or await gw.registry.require(name)
        content_type = b""
        length = -1
        prefer_async = False
        key: str | None = None
        want_logs = False
        event: bytes | None = None
        origin: bytes | None = None
        deadline: bytes | None = None
        for k, v in scope["headers"]:
            if k == b"content-type":
                content_type = v
            elif k == b"x-spanfaas-logs":
                want_logs = v == b"include"
                if not want_logs:  # 'true' and the like were ignored: a 200 without the logs, no word why
                    raise InvalidRequest(
                        f"X-Spanfaas-Logs: {v.decode('latin-1')!r} is not known; send 'X-Spanfaas-Logs: include' "
                        "for the invocation's logs in the X-Spanfaas-Logs header of the answer, or leave it out"
                    )
            elif k == b"x-spanfaas-event":
                event = v
            elif k == b"x-spanfaas-origin-id":
                origin = v
            elif k == b"x-spanfaas-timeout":
                deadline = v
            elif k == b"content-length":
                length = int(v) if v.isdigit() else -1
            elif k == b"prefer":  # (several Prefer headers add up: RFC 7240)
                prefer_async = prefer_async or v == b"respond-async" or _prefers_async(v)
            elif k == b"idempotency-key":
                key = v.decode("latin-1")
                if not 0 < len(key) <= IDEMPOTENCY_KEY_MAX:
                    raise InvalidRequest(
                        f"the Idempotency-Key header is {len(key)} characters long; "
                        f"send 1 to {IDEMPOTENCY_KEY_MAX} (a UUID, or an id of the order it stands for)"
                    )
        is_async = _async_mode(scope["query_string"], prefer_async) if scope["query_string"] else prefer_async
        if key is not None and not is_async:
            raise InvalidRequest(
                "the Idempotency-Key header is taken on asynchronous invocations only (the same key queues the "
                "invocation once and answers its id again); send it with mode=async (or Prefer: respond-async) "
                "and poll the invocation, or leave it out to wait for the result"
            )
        if length > self.limit:
            raise too_large("payload", "max_payload", self.limit, length)
        attributes = _event_attributes(scope, event, is_async) if event is not None else None
        origin_id = _origin_id(scope, origin, is_async) if origin is not None else ""
        timeout = _placed_timeout(scope, deadline, is_async) if deadline is not None else None
        early = gw.early
        prewarmed = early.enabled
        started = False  # this request's prewarm started something: release it if the request fails
        if prewarmed:  # early action: start the function now, while the body arrives (gateway/early.py)
            started = await early.headers(name)
        try:
            body = await read_body(receive, self.limit)
            if not content_type:
                content_type = b"application/json"
            if body and self._is_json(content_type):
                try:
                    _decode_raw(body)
                    if not body.isascii():  # (Raw checks the structure, not the strings' UTF-8)
                        body.decode()
                except UnicodeDecodeError as exc:
                    raise InvalidPayload(
                        f"the request body is not valid JSON: it is not UTF-8 (byte {exc.start}); JSON is sent as UTF-8 "
                        "(RFC 8259): encode it so, or set Content-Type to what you send (e.g. application/octet-stream)"
                    ) from None
                except msgspec.DecodeError as exc:
                    raise InvalidPayload(
                        f"the request body is not valid JSON: {exc}; "
                        "send JSON, or set Content-Type to what you send (e.g. application/octet-stream)"
                    ) from None
                except RecursionError:  # msgspec's depth limit: the request's fault, not the gateway's
                    raise InvalidPayload(
                        "the request body is JSON nested too deeply to decode; flatten it, "
                        "or send it as bytes with Content-Type: application/octet-stream"
                    ) from None
                if is_async and (wrong := out_of_range(body)) is not None:
                    raise wrong  # checked whole before it is queued (the store's write costs more)
        except SpanfaasError:
            if started:
                early.release(name)  # nothing will run: let go of what the prewarm prepared
            raise
        if early.trace is not None:
            early.note(name, "body")
        ct = content_type.decode("latin-1")
        invocation_id = f"{self._id_prefix}{next(self._ids):016x}"
        now = time.time()
        if is_async:
            await self._accept(send, name, ct, body, key, invocation_id, now)
            return
        # A call another gateway placed here runs under that gateway's id (context.invocation_id,
        # so its logs join); this record keeps its own id (unique in this store) and that one as origin.
        starts = _Starts()
        ctx = InvokeContext(
            invocation_id=origin_id or invocation_id, content_type=ct, event=attributes, timeout=timeout,
            on_start=starts.started, on_refused=starts.refused,
        )  # fmt: skip
        def record_infra_failure(exc: SpanfaasError) -> None:
            gw.recorder.add(
                InvocationRecord(
                    id=invocation_id, function=name, status="failed", content_type=ct, attempts=1,
                    error=ErrorInfo(kind="infra", type=type(exc).__name__, message=exc.message),
                    created_at=now, started_at=now, finished_at=time.time(), origin=origin_id,
                )  # fmt: skip
            )

        t0 = time.perf_counter()
        in_flight = gw.metrics.in_flight
        in_flight[name] = in_flight.get(name, 0) + 1
        gw.recorder.begin(invocation_id, name, ct, now, origin_id)  # listed as running meanwhile
        try:
            result = await gw.infra.invoke(fn.spec, body, ctx)
        except SpanfaasError as exc:
            if isinstance(exc, TooManyRequests) and starts.n <= 0:
                # The function is full (scaling.max + scaling.queue, here or on a site): refused
                # before it ran, as a payload over the limit is; not a platform failure, and
                # nothing to look up later.  The client tries again after Retry-After.  (Full
                # where it failed over to, after a try that may have run: not a refusal, below.)
                gw.metrics.refused(name)
                raise
            if name not in gw.registry.functions:
                # Removed (``rm``) while this call arrived or waited: no function to run, as for
                # a name never deployed -- not the platform's failure, nothing to record or count.
                raise FunctionNotFound(
                    f"function '{name}' was removed while this invocation waited to run ({exc.message}); "
                    + like_deployed(name, gw.registry.functions)
                ) from None
            gw.metrics.infra_failed(name)
            if starts.n > 0 and isinstance(exc, InfraUnavailable | TooManyRequests) and not isinstance(exc, InfraInterrupted):
                # (its type says it may have run; the words stay.  A 429's Retry-After goes: sent
                # again, it may run twice, and a gateway that placed it here must not take it back)
                extra = {k: v for k, v in exc.extra.items() if not (isinstance(exc, TooManyRequests) and k == "retry_after")}
                ran = InfraInterrupted(exc.message, **extra)
                record_infra_failure(ran)
                ran.extra.setdefault("invocation_id", invocation_id)
                raise ran from None
            if starts.n <= 0 and isinstance(exc, InfraError) and not isinstance(exc, InfraUnavailable):
                # The platform failed before any run started (a template that could not start, a
                # version being replaced): nothing of it ran, and the answer says so, as its 502
                # infra-error did not (a gateway that placed the call here took it for a run).
                nothing = InfraUnavailable(exc.message, **exc.extra)
                record_infra_failure(nothing)
                nothing.extra.setdefault("invocation_id", invocation_id)
                raise nothing from None
            record_infra_failure(exc)
            exc.extra.setdefault("invocation_id", invocation_id)
            raise
        except asyncio.CancelledError:
            # The gateway is stopping and cut this call short (uvicorn's graceful timeout, a
            # second Ctrl-C): the platform's failure, recorded and answered, not a traceback.
            if not gw.stopping:
                raise
            cut: InfraUnavailable
            if starts.n > 0:
                cut = InfraInterrupted("the gateway stopped during the invocation; it may have run in part", invocation_id=invocation_id)
            else:  # it waited (in its function's queue): the client may send it again
                cut = InfraUnavailable(
                    "the gateway stopped while the invocation waited to run; nothing of it ran: send it again once the "
                    "gateway is back", invocation_id=invocation_id,
                )  # fmt: skip
            record_infra_failure(cut)
            raise cut from None
        finally:
            in_flight[name] -= 1
            gw.recorder.end(invocation_id)  # (its outcome is added with no await in between: never unlisted)
        if result.error is not None and result.error.type.endswith("ValidationError") and self._is_json(content_type):
            if (wrong := out_of_range(body)) is not None:  # the event never reached the function
                raise wrong
        elapsed = time.perf_counter() - t0
        gw.metrics.observe(name, result, elapsed)
        if prewarmed:
            early.ran(name, result.cold, fn.spec.scaling.idle_ttl)
        gw.recorder.add(
            InvocationRecord(
                id=invocation_id, function=name, status="succeeded" if result.error is None else "failed",
                content_type=ct, output=result.output, output_type=result.content_type, error=result.error,
                logs=result.logs, attempts=1, infra=result.infra, created_at=now, started_at=now,
                finished_at=now + elapsed, duration_ms=result.duration_ms, cold=result.cold, origin=origin_id,
                tried=result.tried,
            )  # fmt: skip
        )
        headers = [
            (b"x-spanfaas-invocation-id", invocation_id.encode()),
            (b"x-spanfaas-duration-ms", b"%.3f" % result.duration_ms),
            (b"x-spanfaas-infra", result.infra.encode()),
            (b"x-spanfaas-cold", b"true" if result.cold else b"false"),
        ]
        if result.tried:  # it failed over: where it was tried first (a site that hung may have run it too)
            headers.append((b"x-spanfaas-tried", ", ".join(t.partition(":")[0] for t in result.tried).encode("latin-1", "replace")))
            headers.append((b"x-spanfaas-tried-reasons", tried_header(result.tried)))
        if result.error is not None:
            failure = _failure(result)
            if result.error.kind == "error" and ct.lower().startswith(_FORM):
                failure.extra["hint"] = _FORM_HINT
            await send_problem(send, failure, scope["path"], headers)
            return
        output = result.output
        if want_logs and result.logs:
            headers.append((b"x-spanfaas-logs", logs_header(result.logs, invocation_id)))
        headers.append((b"content-type", result.content_type.encode("latin-1")))
        headers.append((b"content-length", b"%d" % len(output)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": output})

    async def _accept(
        self, send: Send, name: str, ct: str, body: bytes, key: str | None, invocation_id: str, now: float
    ) -> None:
        """Commit the invocation to the queue, then answer 202."""
        record = InvocationRecord(
            id=invocation_id, function=name, status="queued", mode="async", content_type=ct,
            payload=body, idempotency_key=key, created_at=now,
        )  # fmt: skip
        try:
            record, created = await self.gw.enqueuer.enqueue(record)
        except RecordRefused as exc:  # a value of the request: sent again as it is, refused again
            raise ValueRefused(
                f"{exc}; the invocation was not queued, and would be refused again as it is: change that value of "
                "the request (its payload, Content-Type or Idempotency-Key), then send it again"
            ) from None
        except asyncio.CancelledError:
            # The gateway is stopping and cut this request short while its transaction
            # may be in the store's hands (it still commits once the store answers): not
            # "try again", which would queue it twice, unless the key makes that safe.
            if not self.gw.stopping:
                raise
            raise _cut_while_queued(invocation_id, key) from None
        if not created and (record.payload != body or record.content_type != ct):
            # The same key must mean the same request (draft-ietf-httpapi-idempotency-key-header).
            raise IdempotencyKeyReused(
                f"the Idempotency-Key {key!r} was first sent with another payload (invocation {record.id}); "
                "send a new key for a new request"
            )
        self.gw.dispatcher.wake()
        out = _encode(Queued(id=record.id, status=record.status))
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(out)),
                    (b"location", f"/v1/invocations/{record.id}".encode()),
                    (b"x-spanfaas-invocation-id", record.id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": out})


class _Starts:
    """How many runs of one sync invocation may have started (``InvokeContext.on_start``,
    less those a site refused before they ran, ``on_refused``).  A 503 the call then ends
    with says which it was: ``InfraInterrupted`` (it may have run) when any did, plain
    ``InfraUnavailable`` (nothing ran: a gateway that placed the call here fails over from
    it as from a 429, its start written off) when none did.  A platform failure of another
    kind (``InfraError``, 502) is that 503 too when none did; a 502 then says a run started."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    def started(self) -> None:
        self.n += 1

    def refused(self) -> None:
        self.n -= 1


def _event_attributes(scope: Scope, header: bytes, is_async: bool) -> dict[str, object]:
    """The CloudEvent attributes a gateway that placed an event's invocation on this site
    sends (``x-spanfaas-event``, a JSON object): the function's ``context.event`` here, as
    where the event arrived.  Taken from a token that may deploy (a site's peer token has
    that scope; it could deploy code that sets them anyway), on synchronous calls."""
    require(scope, "deploy")
    if is_async:
        raise InvalidRequest(
            "the x-spanfaas-event header is taken on synchronous invocations only (a gateway that placed an "
            "event's invocation here sends it); send the event to /v1/events instead"
        )
    try:
        attributes = json.loads(header)
    except ValueError as exc:
        raise InvalidRequest(f"the x-spanfaas-event header is not JSON: {exc}; send the event's attributes as a JSON object") from None
    if not isinstance(attributes, dict):
        raise InvalidRequest(
            f"the x-spanfaas-event header is JSON {type(attributes).__name__}, not an object; send the event's attributes "
            "as a JSON object"
        )
    return attributes


_ORIGIN_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def _origin_id(scope: Scope, header: bytes, is_async: bool) -> str:
    """The id a gateway that placed this invocation here gave it (``x-spanfaas-origin-id``):
    the function's ``context.invocation_id`` here, as there.  Taken from a token that may
    deploy (a site's peer token has that scope), on synchronous calls."""
    require(scope, "deploy")
    if is_async:
        raise InvalidRequest(
            "the x-spanfaas-origin-id header is taken on synchronous invocations only (a gateway that placed an "
            "invocation here sends it); leave it out"
        )
    if not _ORIGIN_ID.fullmatch(header):
        raise InvalidRequest(
            f"the x-spanfaas-origin-id header {header[:40].decode('latin-1')!r} is not an invocation id; send 1 to 128 "
            "letters, digits or . _ : - (the id the placing gateway gave the invocation)"
        )
    return header.decode("ascii")


def _placed_timeout(scope: Scope, header: bytes, is_async: bool) -> float:
    """What is left of the timeout of a call another gateway placed here after trying it
    elsewhere first (``x-spanfaas-timeout``): the function is cut then, as it would be there.
    Taken from a token that may deploy (a site's peer token has that scope), on synchronous calls."""
    require(scope, "deploy")
    if is_async:
        raise InvalidRequest(
            "the x-spanfaas-timeout header is taken on synchronous invocations only (a gateway that placed an "
            "invocation here sends it); leave it out"
        )
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InvalidRequest(
            f"the x-spanfaas-timeout header {header[:40].decode('latin-1')!r} is not a number of seconds above 0; "
            "send what is left of the invocation's timeout, e.g. 12.5"
        )
    return seconds


def _cut_while_queued(invocation_id: str, key: str | None) -> InfraUnavailable:
    said = "the gateway is stopping and cut this request short while it queued the invocation; "
    if key is not None:
        return InfraUnavailable(
            said + f"it may be queued: send it again with the same Idempotency-Key ({key!r}) once the gateway "
            "is back, and it is queued once (if it was, you get that invocation)", invocation_id=invocation_id,
        )  # fmt: skip
    return InfraUnavailable(
        said + f"it may be queued as invocation {invocation_id}: look it up (GET /v1/invocations/{invocation_id}) "
        "once the gateway is back before you send it again, or it may run twice (send an Idempotency-Key to make "
        "a retry safe)", invocation_id=invocation_id,
    )  # fmt: skip


def logs_header(logs: str, invocation_id: str) -> bytes:
    """``logs`` as a JSON string (ASCII, so a valid header value) of at most ``LOGS_HEADER_MAX``
    bytes; of a longer log, its head and its tail (where it failed), and between them a marker
    saying how much was left out and where the whole log is."""
    out = msgspec.json.encode(logs)
    if len(out) <= LOGS_HEADER_MAX and out.isascii():
        return out

    def marker(left_out: int) -> str:
        return (
            f"\n[spanfaas: {left_out} characters left out here; the whole log: GET /v1/invocations/{invocation_id} "
            "on the site that ran it]\n"
        )

    text = keep_ends(logs, LOGS_HEADER_MAX, marker, _header_size)
    return json.dumps(text, ensure_ascii=True).encode("ascii")


def tried_header(tried: list[str]) -> bytes:
    """Where a call was tried first, each ``"name: why it failed there"`` as its record keeps
    them, as a JSON array (ASCII: a valid header value); each entry of at most
    ``TRIED_ENTRY_MAX`` bytes (its head and tail), so that SDKs and a placing gateway have them
    with the answer."""

    def marker(left_out: int) -> str:
        return f" [spanfaas: {left_out} characters left out] "

    return json.dumps([keep_ends(t, TRIED_ENTRY_MAX, marker, _header_size) for t in tried], ensure_ascii=True).encode("ascii")


def _header_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=True))


_PREFERENCE_NAME = re.compile(rb"[ \t]*([^ \t=;,]*)")


def _prefers_async(value: bytes) -> bool:
    """Whether a Prefer header has the ``respond-async`` preference (RFC 7240: comma-separated
    preferences, each a case-insensitive token with an optional ``=value``, then ``;parameters``;
    a comma inside a quoted value separates nothing)."""
    if b"respond-async" not in value.lower():
        return False
    start, quoted, escaped = 0, False, False
    for i, c in enumerate(value + b","):
        if escaped:
            escaped = False
        elif quoted:
            escaped = c == 0x5C  # backslash
            quoted = c != 0x22  # the closing quote
        elif c == 0x22:
            quoted = True
        elif c == 0x2C:  # a comma between preferences
            name = _PREFERENCE_NAME.match(value, start, i)
            if name is not None and name[1].lower() == b"respond-async":
                return True
            start = i + 1
    return False


def _async_mode(query: bytes, prefer_async: bool) -> bool:
    """Whether ``mode`` in the query asks for async (``prefer_async``, from ``Prefer: respond-async``,
    if it is not there); InvalidRequest when they contradict each other."""
    mode: str | None = None
    for k, v in parse_qsl(query.decode("latin-1")):
        if k == "mode":
            if v not in ("sync", "async"):
                raise InvalidRequest(f"mode={v!r} is not known; use mode=sync (default) or mode=async")
            if mode is not None and v != mode:
                raise InvalidRequest(f"the query has both mode={mode} and mode={v}; send one")
            mode = v
    if mode is None:
        return prefer_async
    if prefer_async and mode == "sync":
        raise InvalidRequest(
            "the request has both mode=sync and Prefer: respond-async; send one (mode=async, or drop respond-async)"
        )
    return mode == "async"


_FORM = "application/x-www-form-urlencoded"
_FORM_HINT = (
    f"the request's Content-Type was {_FORM} (what curl -d sends), so the event was bytes; "
    "send JSON with Content-Type: application/json (curl -H 'Content-Type: application/json')"
)
"""Said with a function's failure on a form-encoded body: the README's curl example without its
header sends one, and the handler that reads a dict fails on bytes with no word of why."""


def _failure(result: Result) -> SpanfaasError:
    try:
        result.raise_for_error()
    except SpanfaasError as exc:
        return exc
    raise AssertionError("raise_for_error did not raise")  # pragma: no cover
