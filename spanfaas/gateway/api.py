"""The REST API: one table of endpoints that drives the routes, the scope
checks and the OpenAPI document alike."""

from __future__ import annotations

import asyncio
import functools
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import spanfaas
from spanfaas.errors import RUNNING_ELSEWHERE, InvalidRequest, InvocationNotFound, NotFound
from spanfaas.gateway.auth import allows, issue_token, require, token_of
from spanfaas.gateway.events_api import event_endpoints
from spanfaas.gateway.images_api import image_endpoints
from spanfaas.gateway.invoke import InvokeEndpoint, read_body, too_large
from spanfaas.gateway.listing import list_invocations
from spanfaas.gateway.views import (
    Deployed,
    FunctionList,
    Info,
    InvocationList,
    InvocationView,
    Limits,
    Pending,
    Queued,
    REDACTED,
    TokenCreated,
    TokenList,
    TokenRequest,
    function_view,
    invocation_view,
    token_view,
)
from spanfaas.model import FunctionRecord, InfraInfo, invocation_id_problem
from spanfaas.scheduler import Explanation, SpanningInfrastructure, explain
from spanfaas.store import StoreUnavailable

if TYPE_CHECKING:
    from spanfaas.gateway.app import Gateway

__all__ = ["Endpoint", "Header", "Param", "endpoints", "routes"]

log = logging.getLogger("spanfaas.gateway")
_encode = msgspec.json.Encoder().encode
_NAME = r"{name:str}"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query | header
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Header:
    """A header an answer sends (``required``: every answer of that status sends it)."""

    name: str
    description: str
    required: bool = True


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Any
    """``async (request) -> Response``, or a raw ASGI app."""
    summary: str
    scope: str | None = "invoke"
    tag: str = "functions"
    params: tuple[Param, ...] = ()
    body: tuple[str, ...] | type | None = None
    """Content types accepted as raw bytes, or a Struct decoded from JSON (the request's
    Content-Type is documented here, never as a header parameter: OpenAPI ignores those)."""
    body_note: str = ""
    """What the request body is, for the document."""
    status: int = 200
    response: type | str | None = None
    """A Struct, a content type of raw bytes, or None (no body)."""
    errors: tuple[int, ...] = ()
    error_notes: dict[int, str] = field(default_factory=dict)
    """What an error status means here, where it is not what it means elsewhere (openapi.py)."""
    extra_responses: dict[int, tuple[str, type | None]] = field(default_factory=dict)
    headers: dict[int, tuple[Header, ...]] = field(default_factory=dict)
    """The headers of its answers, by status (those of every error: openapi.py)."""

    @property
    def openapi_path(self) -> str:
        return self.path.replace(":str}", "}")


def json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json", headers=headers)


def _guard(fn: Callable[..., Awaitable[Response]], gw: Gateway, scope: str | None) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Response:
        if scope is not None:
            require(request.scope, scope)
        return await fn(gw, request)

    return endpoint


# -- functions ---------------------------------------------------------------------


async def deploy_function(gw: Gateway, request: Request) -> Response:
    name = request.path_params["name"]
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > gw.settings.max_bundle:  # its size known: say it
        raise too_large("bundle", "max_bundle", gw.settings.max_bundle, int(length))
    data = await read_body(request.receive, gw.settings.max_bundle, "bundle", "max_bundle")
    token = token_of(request.scope)
    record, changed = await gw.registry.deploy(name, data, actor=token.name if token is not None else "")
    pending = []  # where it is not yet (a site down, one refusing our token): said now, not at its first 503
    if isinstance(gw.infra, SpanningInfrastructure):
        pending = [Pending(infrastructure=i, reason=r) for i, r in gw.infra.pending(name)]
    answer = Deployed(**msgspec.structs.asdict(record), changed=changed, pending=pending)
    return json(answer, 201 if changed else 200, {"location": f"/v1/functions/{name}"})  # (documented: _LOCATION)


async def list_functions(gw: Gateway, request: Request) -> Response:
    records = await asyncio.to_thread(gw.store.list_functions)
    env_values = allows(request.scope, "deploy")
    return json(FunctionList(functions=[function_view(r, env_values=env_values) for r in records]))


async def get_function(gw: Gateway, request: Request) -> Response:
    record = await gw.registry.require(request.path_params["name"])
    return json(function_view(record, env_values=allows(request.scope, "deploy")))


async def delete_function(gw: Gateway, request: Request) -> Response:
    await gw.registry.remove(request.path_params["name"])
    return Response(status_code=204)


# -- invocations ---------------------------------------------------------------------


async def get_invocation(gw: Gateway, request: Request) -> Response:
    id = request.path_params["id"]
    record = gw.recorder.get(id)
    if record is None or record.mode == "async":
        # An async outcome is shown once it is stored: until then a gateway that dies runs the
        # invocation again, and the outcome a client had read would change.  (A sync caller
        # already has its answer; its record waiting for the batch may be shown.)
        record = await asyncio.to_thread(gw.store.get_invocation, id)
    if record is None:
        problem = invocation_id_problem(id)
        elsewhere = f"; {RUNNING_ELSEWHERE}" if not problem and not gw.store.exclusive else ""
        raise InvocationNotFound(f"{problem or f'invocation {id!r} not found'}; GET /v1/invocations?function=NAME lists recent ones{elsewhere}")
    return json(invocation_view(record))


# -- tokens ----------------------------------------------------------------------------

SCOPES_HELP = "'invoke' (call functions, send events), 'deploy' (also deploy and remove functions and triggers), 'admin' (everything, tokens and image lists too)"


async def create_token(gw: Gateway, request: Request) -> Response:
    body = await read_body(request.receive, 65536, "request body", None)
    example = 'send JSON with Content-Type: application/json, e.g. {"name": "ci", "scopes": ["invoke"]}'
    try:
        req = msgspec.json.decode(body, type=TokenRequest)
    except msgspec.ValidationError as exc:
        said = str(exc)
        if "$.scopes" in said:  # name the scopes there are, not only that one is wrong
            example = f"scopes are {SCOPES_HELP}; {example}"
        raise InvalidRequest(f"invalid token request: {said}; {example}") from None
    except msgspec.DecodeError as exc:
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        sent = f"a {kind} body" if kind and kind != "application/json" else "a body that is not valid JSON"
        raise InvalidRequest(f"the token request is {sent} ({exc}); {example}") from None
    _check_token_name(req.name)
    record, token = await asyncio.to_thread(issue_token, gw.store, req.name, req.scopes)
    return json(TokenCreated(id=record.id, name=record.name, token=token, scopes=list(record.scopes)), 201)


_CONTROL_NAMES = {"\t": "a tab", "\n": "a line feed", "\r": "a carriage return", "\x00": "a NUL", "\x1b": "an escape"}


_JOINERS = ("\u200c", "\u200d")  # zero width non-joiner, zero width joiner


def _check_token_name(name: str) -> None:
    """A token's name is shown in token lists and as the actor of what it deploys: a control
    character (or a line or paragraph separator) in it would forge lines or colours there, and
    an invisible format character (a zero-width space, a bidi override) a name that looks like
    another's, or reads reversed.  But ZWNJ and ZWJ between letters: Persian, the Indic scripts
    and others need them to spell words right (RFC 5892's CONTEXTJ takes them in domain names)."""
    for i, ch in enumerate(name):
        category = unicodedata.category(ch)
        if category in ("Cc", "Zl", "Zp", "Cf"):
            if ch in _JOINERS and _between_letters(name, i):
                continue
            label = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "").lower()
            said = f"U+{ord(ch):04X} at character {i + 1}" + (f" ({label})" if label else "")
            kind = "an invisible format character" if category == "Cf" else "a control character"
            joiner = " (a zero width joiner or non-joiner is taken only between letters)" if ch in _JOINERS else ""
            raise InvalidRequest(
                f"the token name {name!r} has {kind}, {said}{joiner}; "
                "send a name of printable characters, e.g. \"ci deploy\""
            )


def _between_letters(text: str, i: int) -> bool:
    """Whether ``text[i]`` stands between two letters: a letter (with its marks, such as a virama) before it, a letter after it."""
    before = i - 1
    while before >= 0 and unicodedata.category(text[before]).startswith("M"):
        before -= 1
    letter_before = before >= 0 and unicodedata.category(text[before]).startswith("L")
    return letter_before and i + 1 < len(text) and unicodedata.category(text[i + 1]).startswith("L")


async def list_tokens(gw: Gateway, request: Request) -> Response:
    tokens = await asyncio.to_thread(gw.store.list_tokens)
    return json(TokenList(tokens=[token_view(t) for t in tokens]))


async def delete_token(gw: Gateway, request: Request) -> Response:
    id = request.path_params["id"]
    if not await asyncio.to_thread(gw.store.delete_token, id):
        raise NotFound(f"token '{id}' not found; GET /v1/tokens lists them")
    gw.tokens.forget(id)
    return Response(status_code=204)


# -- platform -----------------------------------------------------------------------------


async def _infos(gw: Gateway) -> list[InfraInfo]:
    if isinstance(gw.infra, SpanningInfrastructure):
        return gw.infra.infos()
    return [await gw.infra.info()]


async def explain_function(gw: Gateway, request: Request) -> Response:
    record = await gw.registry.require(request.path_params["name"])
    return json(await explain(gw.infra, record.spec))


async def info(gw: Gateway, request: Request) -> Response:
    infos = await _infos(gw)
    protections = [p for i in infos for p in i.protections]
    s = gw.settings
    return json(
        Info(
            version=spanfaas.__version__,
            infrastructures=infos,
            protections=protections,
            limits=Limits(max_payload=s.max_payload, max_bundle=s.max_bundle),
            gateway=gw.id,
        )
    )


async def metrics(gw: Gateway, request: Request) -> Response:
    depth: int | None = None
    try:
        depth = await asyncio.to_thread(gw.store.queue_depth)
    except StoreUnavailable as exc:  # the rest is in memory: served, the store said down
        log.warning("/metrics: the async queue's depth is unknown: %s", exc)
    body = gw.metrics.render(await _infos(gw), depth)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def healthz(gw: Gateway, request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def openapi(gw: Gateway, request: Request) -> Response:
    return Response(gw.openapi_json, media_type="application/json")


# -- the table --------------------------------------------------------------------------

_fn = Param("name", "path", "The function's name (as in its manifest)", required=True)
_RAN = (
    Header("X-Spanfaas-Invocation-Id", "the invocation's id (GET /v1/invocations/{id} shows it)"),
    Header("X-Spanfaas-Duration-Ms", "how long the function ran, in milliseconds"),
    Header("X-Spanfaas-Infra", "the infrastructure that ran it; through a site that failed it over itself, "
           "the path to where it ran there (eu/local)"),
    Header("X-Spanfaas-Cold", "true when it started a new instance"),
    Header("X-Spanfaas-Tried", "when it failed over: the infrastructures it was tried on first, comma-separated "
           "(its record's tried says why each failed; a site that stopped answering may have run it too)", required=False),
    Header("X-Spanfaas-Tried-Reasons", "when it failed over: its record's tried, a JSON array of "
           "\"name: why it failed there\" (ASCII; each entry of at most 1 KiB, its head and tail)", required=False),
)
"""Sent with the answer of every invocation that ran (also when the function failed)."""
_FAILED = tuple(Header(h.name, h.description + ", when the function ran and failed", required=False) for h in _RAN)
_LOCATION = (Header("Location", "the function's path: /v1/functions/{name}"),)
_ENV_NOTE = ("its manifest's [env] values are shown to a token with scope 'deploy' (or 'admin') only: "
             f"an 'invoke' token reads each as {REDACTED!r}, the names as they are")
_BUNDLE = ("application/gzip", "application/zip", "application/octet-stream")


def endpoints(gw: Gateway) -> list[Endpoint]:
    return [
        Endpoint(
            "POST", f"/v1/functions/{_NAME}/invoke", InvokeEndpoint(gw),
            "Invoke a function: the body is its event, the response body its result",
            params=(
                _fn,
                Param("mode", "query", "sync (default) waits for the result; async answers 202 at once. "
                      "Values that contradict each other (mode=sync&mode=async, or mode=sync with "
                      "Prefer: respond-async) are a 400",
                      {"type": "string", "enum": ["sync", "async"]}),
                Param("Prefer", "header", "'respond-async' is the same as mode=async (a mode=sync that contradicts it is a 400)"),
                Param("Idempotency-Key", "header", "async only, 1-255 characters: the same key and payload for the same function return the same invocation; the same key with another payload is a 422; on a sync invocation it is a 400"),
                Param("X-Spanfaas-Logs", "header", "'include' asks for the invocation's logs in the X-Spanfaas-Logs "
                      "header of a 200 (sync)", {"type": "string", "enum": ["include"]}),
            ),
            body=("application/json", "*/*"), response="*/*",
            body_note="The event: JSON (application/json or a +json type; a body without a Content-Type is taken "
                      "as JSON) is validated and passed to the function decoded, any other type is passed to the "
                      "function as bytes. Empty: no event (None).",
            errors=(400, 401, 403, 404, 413, 422, 429, 500, 502, 503, 504),
            error_notes={502: "The infrastructure failed after the invocation's run started (infra-error): it may "
                              "have run, in part. One that failed before any run started is a 503 infra-unavailable: "
                              "nothing of it ran"},
            extra_responses={202: ("Accepted for async execution; poll the Location", Queued)},
            headers={
                200: (*_RAN, Header("X-Spanfaas-Logs", "the invocation's logs as a JSON string (ASCII), when asked "
                                    "for with X-Spanfaas-Logs: include and there are any; at most 8 KiB: a longer log "
                                    "is cut, and says where the whole one is", required=False)),
                202: (Header("Location", "the invocation's path, to poll: /v1/invocations/{id}"),
                      Header("X-Spanfaas-Invocation-Id", "the invocation's id")),
                500: _FAILED, 504: _FAILED,
            },
        ),
        Endpoint("PUT", f"/v1/functions/{_NAME}", deploy_function,
                 "Deploy a function bundle (tar.gz or zip with spanfaas.toml at its root) as a new version",
                 scope="deploy", params=(_fn,), body=_BUNDLE, status=201, response=Deployed,
                 errors=(400, 401, 403, 409, 413, 500, 502, 503, 504),
                 error_notes={
                     409: "The manifest declares a trigger named as one the function was given through the API "
                          "(the problem names both)",
                     500: "The store failed to record the new version (deploy-not-recorded; a store down, locked or "
                          "full is a 503): it was taken off the infrastructure again, the version before serves",
                     502: "The infrastructure failed, or the image's package source cannot be reached (image-source-unreachable)",
                     504: "The image build ran past [images] build_timeout (image-build-timeout): try again later",
                 },
                 extra_responses={200: ("Unchanged: the bundle and manifest are the latest version's, which is returned", Deployed)},
                 headers={201: _LOCATION, 200: _LOCATION}),
        Endpoint("GET", "/v1/functions", list_functions, "List deployed functions (latest versions); " + _ENV_NOTE,
                 response=FunctionList, errors=(401, 403)),
        Endpoint("GET", f"/v1/functions/{_NAME}", get_function, "Get a function's latest version; " + _ENV_NOTE,
                 params=(_fn,), response=FunctionRecord, errors=(401, 403, 404)),
        Endpoint("DELETE", f"/v1/functions/{_NAME}", delete_function, "Remove a function, all its versions and its triggers",
                 scope="deploy", params=(_fn,), status=204, errors=(401, 403, 404)),
        Endpoint("GET", f"/v1/functions/{_NAME}/explain", explain_function,
                 "Where an invocation would run now: each infrastructure's verdict, score and reasons",
                 params=(_fn,), response=Explanation, errors=(401, 403, 404)),
        Endpoint("GET", "/v1/invocations", list_invocations,
                 "Invocations, newest first, in pages: follow next (also a Link header, rel=next) for the "
                 "page after; a page ends at limit or at about 4 MiB of logs, outputs and errors. Sync calls "
                 "running on this gateway are listed as running",
                 tag="invocations",
                 params=(Param("function", "query", "only this function's"),
                         Param("status", "query", "only these", {"type": "string", "enum": ["queued", "running", "succeeded", "failed"]}),
                         Param("limit", "query", "at most this many in the page (1-1000, default 50); fewer when the "
                               "page reached its size: follow next", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}),
                         Param("output", "query", "false leaves the outputs (result, output_base64) out: logs and statuses "
                               "without large results; with true, an output over 64 KiB is left out too, and "
                               "output_left_out says its size and where it is", {"type": "boolean", "default": True}),
                         Param("cursor", "query", "where the page starts: opaque, from the next link of the page before "
                               "(with the same function, status and output)")),
                 response=InvocationList, errors=(400, 401, 403, 404),
                 headers={200: (Header("Link", '<the next page>; rel="next", when there is one (as next in the body)',
                                       required=False),)}),
        Endpoint("GET", "/v1/invocations/{id:str}", get_invocation,
                 "An invocation's status, result, error and logs", tag="invocations",
                 params=(Param("id", "path", "The invocation id (X-Spanfaas-Invocation-Id)", {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                               required=True),),
                 response=InvocationView, errors=(401, 403, 404)),
        Endpoint("POST", "/v1/tokens", create_token, "Create an API token (the secret is shown once)",
                 scope="admin", tag="tokens", body=TokenRequest, status=201, response=TokenCreated,
                 errors=(400, 401, 403)),
        Endpoint("GET", "/v1/tokens", list_tokens, "List API tokens (never their secrets)",
                 scope="admin", tag="tokens", response=TokenList, errors=(401, 403)),
        Endpoint("DELETE", "/v1/tokens/{id:str}", delete_token, "Revoke an API token",
                 scope="admin", tag="tokens", params=(Param("id", "path", "The token id", required=True),),
                 status=204, errors=(401, 403, 404)),
        Endpoint("GET", "/v1/info", info, "Version, infrastructures, active sandbox protections, limits",
                 tag="platform", response=Info, errors=(401, 403)),
        Endpoint("GET", "/metrics", metrics, "Prometheus metrics", scope=None, tag="platform",
                 response="text/plain"),
        Endpoint("GET", "/healthz", healthz, "Liveness", scope=None, tag="platform", response="application/json"),
        Endpoint("GET", "/openapi.json", openapi, "This document", scope=None, tag="platform",
                 response="application/json"),
        *event_endpoints(),
        *image_endpoints(),
    ]  # fmt: skip


def routes(gw: Gateway, table: list[Endpoint]) -> list[Route]:
    out = []
    for e in table:
        handler = e.handler if isinstance(e.handler, InvokeEndpoint) else _guard(e.handler, gw, e.scope)
        out.append(Route(e.path, handler, methods=[e.method], name=f"{e.method.lower()} {e.path}"))
    return out
