"""``GET /v1/invocations``: the listing of invocations, in pages.

Newest first, by ``created_at`` then ``id`` (a total order: records made at the
same moment are neither skipped nor repeated across pages).  A page ends at
``limit`` records, or before the record whose logs, outputs and errors would take
the page past ``PAGE_BYTES`` (one record at least);
its ``next`` is the link to the page after it (the same query with an opaque
``cursor``: the position of its last record).  An output over
``LISTED_OUTPUT_MAX`` is left out of a listing, as it is read from the store,
with ``output_left_out`` saying its size and where the whole record is.  So a
response stays in the megabytes, where ``limit=1000`` of 32 MiB results was
32 GB in one response.

The store's records are shown with what it does not hold yet: the sync calls
running on this gateway (``Recorder.running_records``), and, while the store
cannot take writes, the sync outcomes waiting for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from spanfaas.errors import InvalidRequest, NotFound, like_deployed
from spanfaas.gateway.views import InvocationList, invocation_view
from spanfaas.model import InvocationRecord
from spanfaas.store import InvocationPage

if TYPE_CHECKING:
    from spanfaas.gateway.app import Gateway

__all__ = ["LISTED_OUTPUT_MAX", "PAGE_BYTES", "QUERY", "decode_cursor", "encode_cursor", "known_query", "list_invocations", "merge"]

LISTED_OUTPUT_MAX = 64 * 1024
"""Bytes of an output shown in a listing; a larger one is fetched by its id."""
PAGE_BYTES = 4 * 2**20
"""Bytes of logs, outputs and errors a page holds at most (with ~512 a record), unless its one record is larger:
it ends before the record that would pass them."""
QUERY = ("function", "status", "limit", "output", "cursor")
_Position = tuple[float, str]
_cursor_decoder = msgspec.json.Decoder(tuple[float, str])


def encode_cursor(position: _Position) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_cursor(cursor: str) -> _Position:
    try:
        return _cursor_decoder.decode(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidRequest(
            f"cursor={cursor[:60]!r} is not a cursor of this API; follow the next link of the page before "
            "(or leave cursor out for the first page)"
        ) from None


def known_query(request: Request, known: tuple[str, ...] = QUERY) -> None:
    """Refuse a query parameter the endpoint does not take (a typo would filter nothing), or one given twice."""
    q = request.query_params
    takes = ", ".join(known[:-1]) + f" and {known[-1]}" if len(known) > 1 else known[0]
    for name in q:
        if name not in known:
            hint = " (pages follow one another by cursor: follow the next link of a page)" \
                if name in ("page", "offset", "after", "before", "next", "page_token") else ""
            raise InvalidRequest(f"unknown query parameter {name!r}; {request.url.path} takes {takes}{hint}")
        if len(values := q.getlist(name)) > 1:
            raise InvalidRequest(f"{name} is given {len(values)} times; give it once")


def _key(r: InvocationRecord) -> _Position:
    return (r.created_at, r.id)


_RECORD_BYTES = 512
"""What a record's other fields take, about (as the store counts them)."""


def _size(r: InvocationRecord, outputs: bool) -> int:
    """The bytes ``r`` adds to a page: its logs, its output if shown, its error."""
    output = len(r.output) if outputs and len(r.output) <= LISTED_OUTPUT_MAX else 0
    error = len(r.error.message) + len(r.error.traceback) if r.error is not None else 0
    return _RECORD_BYTES + len(r.logs) + output + error


def merge(
    page: InvocationPage, newer: list[InvocationRecord], function: str | None, status: str | None, limit: int,
    after: _Position | None, *, outputs: bool = True, max_bytes: int = PAGE_BYTES,
) -> tuple[list[InvocationRecord], _Position | None]:
    """The page with the records the store does not hold yet (``newer`` versions win) that fall
    in its span; and the position the next page starts after, or None when it is the last.
    It ends before the record that would pass ``max_bytes`` (one record at least): the store's
    page is within it, but the records waiting for the store (a sync call's outcome while it
    cannot write) were added past it."""
    end = _key(page.records[-1]) if page.more and page.records else None
    by_id = {r.id: r for r in page.records}
    for r in newer:
        k = _key(r)
        if (after is not None and k >= after) or (end is not None and k < end):
            continue  # another page's
        if (function is None or r.function == function) and (status is None or r.status == status):
            by_id[r.id] = r
        else:
            by_id.pop(r.id, None)
    out = sorted(by_id.values(), key=_key, reverse=True)
    used = 0
    for i, r in enumerate(out[:limit]):
        used += _size(r, outputs)
        if i and used > max_bytes:  # it begins the next page
            return out[:i], _key(out[i - 1])
    if len(out) > limit:
        return out[:limit], _key(out[limit - 1])
    if page.more:
        return out, _key(out[-1]) if out else end
    return out, None


async def list_invocations(gw: Gateway, request: Request) -> Response:
    known_query(request)
    q = request.query_params
    function = q.get("function")
    status = q.get("status")
    try:
        limit = int(q.get("limit", "50"))
    except ValueError:
        raise InvalidRequest(f"limit={q.get('limit')!r} is not a number; use e.g. limit=50") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest(f"limit={limit} is out of range; use 1 to 1000 (and follow next for more)")
    if status is not None and status not in ("queued", "running", "succeeded", "failed"):
        raise InvalidRequest(f"status={status!r} is not known; use queued, running, succeeded or failed")
    output = q.get("output", "true")
    if output not in ("true", "false"):
        raise InvalidRequest(f"output={output!r} is not known; use output=true (default) or output=false (no results)")
    outputs = output == "true"
    cursor = q.get("cursor")
    after = decode_cursor(cursor) if cursor is not None else None
    if function is not None and function not in gw.registry.functions:
        if await asyncio.to_thread(gw.store.get_function, function) is None and not await asyncio.to_thread(
            gw.store.list_invocations, function, 1, outputs=False
        ):
            raise NotFound(f"function '{function}' not found and has no invocations; {like_deployed(function, gw.registry.functions)}")
    stored = await gw.recorder.try_flush()
    page = await asyncio.to_thread(
        functools.partial(
            gw.store.page_invocations, function, status, limit=limit, after=after, outputs=outputs,
            max_output=LISTED_OUTPUT_MAX, max_bytes=PAGE_BYTES,
        )  # fmt: skip
    )
    newer = gw.recorder.running_records()
    if not stored:  # the store cannot take the records of sync calls now: they wait, and are shown
        newer += gw.recorder.unsaved_records(mode="sync")
    records, last = merge(page, newer, function, status, limit, after, outputs=outputs)
    views = []
    for r in records:
        size = len(r.output) if len(r.output) > LISTED_OUTPUT_MAX else page.left_out.get(r.id) if not r.output else None
        views.append(invocation_view(r, output=outputs, left_out=size if outputs else None))
    next_link = None
    if last is not None:
        next_link = f"{request.url.path}?{urlencode({**dict(q), 'cursor': encode_cursor(last)})}"
    return Response(
        msgspec.json.encode(InvocationList(invocations=views, next=next_link)),
        media_type="application/json",
        headers={"link": f'<{next_link}>; rel="next"'} if next_link else None,
    )
