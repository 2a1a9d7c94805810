"""Every error leaves the gateway as RFC 9457 Problem Details JSON.

``ProblemMiddleware`` (pure ASGI) turns a ``SpanfaasError`` raised anywhere
below it into its problem document, and any other exception into a 500 that
names a reference to find in the log, never the internals.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spanfaas.errors import InfraError, InfraUnavailable, InvocationNotFound, NotFound, SpanfaasError, Unauthorized
from spanfaas.model import invocation_id_problem

__all__ = ["MethodNotAllowed", "ProblemMiddleware", "http_exception_handler", "problem_response", "send_problem"]

log = logging.getLogger("spanfaas.gateway")
PROBLEM_JSON = b"application/problem+json"
_encode = msgspec.json.Encoder().encode


class MethodNotAllowed(SpanfaasError):
    status, exit_code, slug, title = 405, 2, "method-not-allowed", "Method not allowed"


def _own_headers(exc: SpanfaasError) -> list[tuple[str, str]]:
    """What the error itself asks for: a challenge (401), when to try again (429, 503)."""
    headers: list[tuple[str, str]] = []
    if isinstance(exc, Unauthorized):
        headers.append(("www-authenticate", 'Bearer realm="spanfaas"'))
    retry_after = exc.extra.get("retry_after")
    if isinstance(retry_after, int) and retry_after >= 0:  # also in the body, for clients that read only that
        headers.append(("retry-after", str(retry_after)))
    return headers


def _headers(exc: SpanfaasError, body: bytes, extra: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", PROBLEM_JSON), (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode(), v.encode("latin-1")) for k, v in _own_headers(exc))
    headers.extend(extra)
    return headers


def problem_body(exc: SpanfaasError, instance: str | None = None) -> bytes:
    return _encode(exc.to_problem(instance))


async def send_problem(
    send: Send, exc: SpanfaasError, instance: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = problem_body(exc, instance)
    await send({"type": "http.response.start", "status": exc.status, "headers": _headers(exc, body, headers)})
    await send({"type": "http.response.body", "body": body})


def problem_response(exc: SpanfaasError, instance: str | None = None) -> Response:
    body = problem_body(exc, instance)
    resp = Response(body, status_code=exc.status, media_type="application/problem+json")
    for name, value in _own_headers(exc):
        resp.headers[name] = value
    return resp


_INVOCATION = "/v1/invocations/"


def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no route, wrong method) as problems."""
    assert isinstance(exc, HTTPException)
    path = request.url.path
    err: SpanfaasError
    if exc.status_code == 404:
        fixed = path.rstrip("/")
        if fixed != path and fixed and _matched(request, fixed):
            # (not a redirect: a client following it would send a POST's body again, or drop it)
            err = NotFound(f"no such endpoint: {request.method} {path}; drop the trailing slash: {request.method} {fixed}")
        elif request.method in ("GET", "HEAD") and path.startswith(_INVOCATION) and (
            problem := invocation_id_problem(path.removeprefix(_INVOCATION))
        ):  # an id with a '/' in it: no route takes it, but it was meant as an id
            err = InvocationNotFound(f"{problem}; GET /v1/invocations?function=NAME lists recent ones")
        else:
            err = NotFound(f"no such endpoint: {request.method} {path}; GET /openapi.json lists them all")
    elif exc.status_code == 405:
        allowed = _allowed_methods(request) or (exc.headers or {}).get("Allow", "")
        err = MethodNotAllowed(f"{request.method} is not allowed on {path}; allowed: {allowed}")
        exc.headers = {**(exc.headers or {}), "Allow": allowed}
    else:
        err = SpanfaasError(str(exc.detail))
        err.status = exc.status_code  # type: ignore[misc]
    resp = problem_response(err, path)
    if exc.headers:
        resp.headers.update(exc.headers)
    return resp


def _matched(request: Request, path: str) -> bool:
    """Whether some route serves ``path`` (with any method)."""
    scope = {**request.scope, "path": path}
    routes = getattr(request.scope.get("router"), "routes", ())
    return any(route.matches(scope)[0] is not Match.NONE for route in routes)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    methods: set[str] = set()
    for route in getattr(request.scope.get("router"), "routes", ()):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


class ProblemMiddleware:
    def __init__(self, app: ASGIApp, stopping: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.stopping = stopping
        """Whether the server is stopping: then a cancelled request was cut short by it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except SpanfaasError as exc:
            if started:
                log.warning("%s after the response started: %s", type(exc).__name__, exc)
                return
            if isinstance(exc, InfraError):  # the platform's trouble (a store down, a site lost): the operator's too
                log.warning("%s %s answered %d: %s", scope["method"], scope["path"], exc.status, exc)
            await send_problem(send, exc, scope["path"])
        except asyncio.CancelledError:
            # The gateway is stopping and cut this request short (uvicorn's graceful timeout,
            # a second Ctrl-C): say so to the client, rather than a traceback in the log.
            # Any other cancellation (an in-process caller's) is not ours to end.
            if not self.stopping():
                raise
            if not started:
                cut = InfraUnavailable("the gateway is stopping and cut this request short; try again once it is back")
                await send_problem(send, cut, scope["path"])
        except Exception:
            ref = secrets.token_hex(6)
            log.exception("unexpected error serving %s %s (reference %s)", scope["method"], scope["path"], ref)
            if not started:
                err = SpanfaasError(f"the gateway failed unexpectedly; its log has the details under reference {ref}")
                await send_problem(send, err, scope["path"])

