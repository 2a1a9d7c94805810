"""Wire messages of the HTTP API: what the gateway sends and accepts as JSON.

They are the single source of the OpenAPI schemas (``openapi.py``), so the
document and the responses cannot drift apart.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from spanfaas.model import ErrorInfo, FunctionRecord, InfraInfo, InvocationRecord, Protection, TokenRecord, is_json_type

__all__ = [
    "Deployed",
    "FunctionList",
    "Info",
    "InvocationList",
    "InvocationView",
    "Limits",
    "OutputLeftOut",
    "Pending",
    "Problem",
    "Queued",
    "REDACTED",
    "TokenCreated",
    "TokenList",
    "TokenRequest",
    "TokenView",
    "function_view",
    "invocation_view",
    "is_json",
]

Scope = Literal["admin", "deploy", "invoke"]


class FunctionList(Struct):
    functions: list[FunctionRecord]


class Pending(Struct, frozen=True, kw_only=True):
    """An infrastructure a deployed function is not on yet: it gets it when it answers."""

    infrastructure: str
    reason: str
    """Why it is not there yet (down, its token refused, its deploy failed)."""


class Deployed(FunctionRecord, frozen=True, kw_only=True):
    """The answer to a deploy: the version that now serves the function."""

    changed: bool
    """False when the bundle and manifest were those of the latest version: no new
    version was made, and that version, already running, is the answer (200, not 201)."""
    pending: list[Pending] = []
    """The eligible infrastructures (of a gateway with ``[[infrastructures]]``) it is not on
    yet, and why: deployed there when they answer.  When it is on none, its invocations
    fail (503) until one does."""


class Queued(Struct):
    """The answer to an accepted asynchronous invocation (202)."""

    id: str
    status: str


class OutputLeftOut(Struct):
    """An output a listing leaves out for its size: the invocation's own record has it."""

    size: int
    """Its size in bytes."""
    href: str
    """Where the whole record is (``GET /v1/invocations/{id}``)."""


class InvocationView(Struct):
    id: str
    function: str
    status: Literal["queued", "running", "succeeded", "failed"]
    mode: Literal["sync", "async"]
    content_type: str
    """The content type of the output."""
    error: ErrorInfo | None
    logs: str
    attempts: int
    """Runs started (async: not counting claims given back before their run started)."""
    infra: str
    """Where it ran: an infrastructure's name (``local``, a site's); through a site that
    failed the call over itself, the path to where it ran there (``eu/local``), as ``tried`` names it."""
    created_at: float
    started_at: float | None
    finished_at: float | None
    duration_ms: float | None
    cold: bool = False
    reruns: int = 0
    """Of ``attempts``, the runs started again because the gateway died during an
    earlier one that had started; they do not use up the retries."""
    reclaims: int = 0
    """Async: times the invocation was taken back from a gateway that died while it waited
    to run (in its function's queue, or for a deploy): not runs, not in ``attempts``."""
    origin: str = ""
    """On a site: the invocation's id on the gateway that placed it here (the function's
    ``context.invocation_id``); empty for a call made here."""
    tried: list[str] = []
    """The infrastructures tried before ``infra`` ran it, each with why it failed there (a site
    that stopped answering may have run it too)."""
    result: Any | UnsetType = UNSET
    """The output, when it is JSON."""
    output_base64: str | UnsetType = UNSET
    """The output, when it is not JSON."""
    output_left_out: OutputLeftOut | UnsetType = UNSET
    """In a listing: the output was left out for its size (no result, no output_base64); fetch it by id."""


class InvocationList(Struct):
    invocations: list[InvocationView]
    next: str | None = None
    """The link to the next page (this query with a cursor); null on the last page."""


class Limits(Struct):
    max_payload: int
    max_bundle: int


class Info(Struct):
    version: str
    infrastructures: list[InfraInfo]
    protections: list[Protection]
    limits: Limits
    gateway: str = ""
    """This gateway's id for this run (random): a site whose info has our own id is this gateway itself."""


class TokenRequest(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200, description="printable characters: a name with control characters (or a line or paragraph separator) "
                                                                         "or invisible format characters (a zero-width space, a bidi override; a zero width joiner "
                                                                         "or non-joiner but between letters) is a 400")]
    scopes: Annotated[list[Scope], Meta(min_length=1)]


class TokenCreated(Struct):
    id: str
    name: str
    token: str
    """Shown once: only its sha256 is kept."""
    scopes: list[str]


class TokenView(Struct):
    id: str
    name: str
    scopes: list[str]
    created_at: float


class TokenList(Struct):
    tokens: list[TokenView]


class Problem(Struct, omit_defaults=True):
    """RFC 9457 Problem Details; function failures add invocation_id,
    error_type, traceback, logs, exit_status (and hint, when the request's body was
    form-encoded, as curl -d sends it: the event was bytes)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | UnsetType = UNSET


def is_json(content_type: str) -> bool:
    return is_json_type(content_type)


REDACTED = "<redacted>"
"""What a token that may not deploy a function reads for each of its ``[env]`` values."""


def function_view(record: FunctionRecord, *, env_values: bool) -> FunctionRecord:
    """The record as a token sees it: with its ``[env]`` values only when ``env_values``
    (the token may deploy the function, and so set them), else each value ``REDACTED``.

    A manifest's ``[env]`` is where functions are given their API keys and passwords, and
    an ``invoke`` token is the one handed out widely (to callers, other services, CI), so
    its values are no invoker's business.  The names stay, values redacted, rather than
    the table left out: a record keeps one shape whoever reads it (a client reading
    ``spec.env`` does not break), and an invoker can still see which settings a function
    has -- which its code reads anyway -- and that they are set, not to what."""
    if env_values or not record.spec.env:
        return record
    spec = msgspec.structs.replace(record.spec, env=dict.fromkeys(record.spec.env, REDACTED))
    return msgspec.structs.replace(record, spec=spec)


def token_view(t: TokenRecord) -> TokenView:
    return TokenView(id=t.id, name=t.name, scopes=list(t.scopes), created_at=t.created_at)


def invocation_view(r: InvocationRecord, *, output: bool = True, left_out: int | None = None) -> InvocationView:
    """The record as the API shows it; without its output (``result``, ``output_base64``) unless ``output``,
    nor when a listing ``left_out`` an output of that size."""
    duration = r.duration_ms
    if duration is None and r.finished_at is not None and r.started_at is not None:
        duration = (r.finished_at - r.started_at) * 1000
    view = InvocationView(
        id=r.id,
        function=r.function,
        status=r.status,
        mode=r.mode,
        content_type=r.output_type,
        error=r.error,
        logs=r.logs,
        attempts=r.attempts,
        infra=r.infra,
        created_at=r.created_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
        duration_ms=duration,
        cold=r.cold,
        reruns=r.reruns,
        reclaims=r.reclaims,
        origin=r.origin,
        tried=r.tried,
    )
    if not output:
        return view
    if left_out is not None:
        view.output_left_out = OutputLeftOut(size=left_out, href=f"/v1/invocations/{r.id}")
        return view
    if r.status in ("succeeded", "failed") and r.output:
        if is_json(r.output_type):
            view.result = Raw(r.output)
        else:
            view.output_base64 = base64.b64encode(r.output).decode()
    elif r.status == "succeeded" and is_json(r.output_type):
        view.result = None
    return view


encode = msgspec.json.Encoder().encode
