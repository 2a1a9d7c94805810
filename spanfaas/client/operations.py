"""The API calls, written once for both clients (sans-I/O).

Each operation is a generator: it yields a ``Call`` (an HTTP request to make)
or a ``Sleep``, receives the ``httpx.Response`` (or ``None`` after a sleep),
and returns its value.  A failed call is thrown back into the generator as
the typed ``SpanfaasError``, so an operation may recover (``logs`` tries an
invocation id, then a function name).  ``Client`` drives these with blocking
I/O, ``AsyncClient`` with ``await``; neither repeats the API.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Callable, Generator, Iterator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, get_args
from urllib.parse import quote

import httpx
import msgspec

from spanfaas.client.bundle import pack
from spanfaas.errors import (
    PROBLEM_BASE,
    RUNNING_ELSEWHERE,
    Conflict,
    Forbidden,
    InfraError,
    InfraUnavailable,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    SpanfaasError,
    TooManyRequests,
    Unauthorized,
    WaitTimeout,
    error_from_problem,
    format_size,
)
from spanfaas.model import ErrorInfo, InvocationStatus, Result, invocation_id_problem, is_invocation_id

__all__ = [
    "Call",
    "InvokeOutput",
    "Op",
    "Sleep",
    "check_bool",
    "check_int",
    "check_map",
    "check_path",
    "check_response",
    "check_seconds",
    "check_status",
    "check_str",
    "check_timeout",
    "wrong_type",
    "deploy",
    "encode_json",
    "error_from_record",
    "function",
    "functions",
    "health",
    "explain",
    "info",
    "invocation",
    "invocations",
    "invoke",
    "invoke_async",
    "output_from_record",
    "logs",
    "create_token",
    "remove",
    "result",
    "transport_error",
]

T = TypeVar("T")
Progress: TypeAlias = Callable[[int, int], None]
"""Called with (bytes sent, total bytes) while a bundle uploads."""


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request an operation wants made."""

    method: str
    path: str
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    stream: httpx.SyncByteStream | None = None
    timeout: float | None = None
    """Overrides the client's read timeout for this call."""
    lines: Callable[[str], None] | None = None
    """Stream the response: each line of the body is handed here as it arrives
    (the operation then receives the response with its body consumed)."""
    after_timeout: str = ""
    """What the user can do when the wait for the answer runs out (appended to the ``WaitTimeout``)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Op: TypeAlias = Generator[Call | Sleep, httpx.Response | None, T]

_json = msgspec.json.Decoder()


def _decode(resp: httpx.Response | None) -> Any:
    assert resp is not None
    return _json.decode(resp.content)


# -- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvokeOutput:
    """What one successful invocation returned, with the platform's metadata."""

    output: bytes
    content_type: str
    invocation_id: str = ""
    function: str = ""
    duration_ms: float | None = None
    infra: str = ""
    """Where it ran: an infrastructure's name; through a site that failed the call over itself,
    the path to where it ran there (``"eu/local"``), not a name of the gateway's sites."""
    cold: bool | None = None
    tried: tuple[str, ...] = ()
    """Where the call was tried before ``infra`` ran it (it failed over), each as ``"name: why it
    failed there"`` -- a site that stopped answering may have run it too; empty when it ran where
    it was first placed.  What a site tried before running it there is named by the path to it
    (``"eu/far: why"``: site ``eu`` tried its site ``far`` first)."""

    @property
    def is_json(self) -> bool:
        return self.content_type.split(";")[0].strip().lower() in ("application/json", "") or self.content_type.endswith("+json")

    def value(self) -> Any:
        """The decoded output: the JSON value, or the raw bytes for other content types."""
        if self.is_json:
            return _json.decode(self.output) if self.output else None
        return self.output

    def to_record(self) -> dict[str, Any]:
        """The same shape as ``GET /v1/invocations/{id}`` for a success."""
        doc: dict[str, Any] = {
            "id": self.invocation_id,
            "function": self.function,
            "status": "succeeded",
            "content_type": self.content_type,
        }
        if self.is_json:
            doc["result"] = self.value()
        else:
            doc["output_base64"] = base64.b64encode(self.output).decode()
        doc.update(duration_ms=self.duration_ms, infra=self.infra, cold=self.cold, tried=list(self.tried))
        return doc


def _output_from_response(name: str, resp: httpx.Response) -> InvokeOutput:
    h = resp.headers
    duration = h.get("x-spanfaas-duration-ms")
    cold = h.get("x-spanfaas-cold")
    return InvokeOutput(
        output=resp.content,
        content_type=h.get("content-type", "application/json"),
        invocation_id=h.get("x-spanfaas-invocation-id", ""),
        function=name,
        duration_ms=float(duration) if duration else None,
        infra=h.get("x-spanfaas-infra", ""),
        cold=cold.lower() in ("1", "true", "yes") if cold else None,
        tried=_tried(h),
    )


def _tried(h: httpx.Headers) -> tuple[str, ...]:
    """Where a sync call was tried first: ``x-spanfaas-tried-reasons`` (each with why), else the
    names alone of ``x-spanfaas-tried`` (a gateway that sends no reasons)."""
    reasons = h.get("x-spanfaas-tried-reasons")
    if reasons is not None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            return tuple(msgspec.json.decode(reasons, type=list[str]))
    names = h.get("x-spanfaas-tried", "")
    return tuple(n.strip() for n in names.split(",") if n.strip())


def output_from_record(rec: Mapping[str, Any]) -> InvokeOutput:
    ctype = rec.get("content_type") or "application/json"
    if rec.get("output_base64") is not None:
        output = base64.b64decode(rec["output_base64"])
    else:
        output = msgspec.json.encode(rec.get("result"))
        ctype = ctype if "json" in ctype else "application/json"
    return InvokeOutput(
        output=output,
        content_type=ctype,
        invocation_id=str(rec.get("id", "")),
        function=str(rec.get("function", "")),
        duration_ms=rec.get("duration_ms"),
        infra=str(rec.get("infra") or ""),
        cold=rec.get("cold"),
        tried=tuple(str(t) for t in rec.get("tried") or ()),
    )


def error_from_record(rec: Mapping[str, Any]) -> SpanfaasError:
    """The typed error for a failed invocation record."""
    raw = rec.get("error") or {}
    try:
        info = msgspec.convert(raw, ErrorInfo)
    except msgspec.ValidationError:
        return SpanfaasError(f"invocation {rec.get('id')} failed: {raw}", invocation_id=rec.get("id"))
    result = Result(invocation_id=str(rec.get("id", "")), function=str(rec.get("function", "")), error=info, logs=str(rec.get("logs") or ""))
    try:
        result.raise_for_error()
    except SpanfaasError as exc:
        if rec.get("tried"):  # it failed over, then failed: where it was tried first
            exc.extra["tried"] = [str(t) for t in rec["tried"]]
        return exc
    raise AssertionError("unreachable: a failed record has an error")  # pragma: no cover


# -- errors -------------------------------------------------------------------

_BY_STATUS: dict[int, type[SpanfaasError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: TooManyRequests,
    503: InfraUnavailable,
}

def check_response(
    resp: httpx.Response, *, base_url: str, has_token: bool, saved_for: Callable[[], str | None] | None = None
) -> httpx.Response:
    """Return a successful response; raise the typed error of a failed one."""
    if resp.status_code < 300:
        return resp
    if resp.status_code < 400:  # no answer: a proxy's redirect (http to https), or an empty name in the path
        location = resp.headers.get("location", "")
        raise InvalidRequest(
            f"{base_url} answered {resp.status_code} {resp.reason_phrase} to {resp.request.method} {resp.request.url.path}"
            + (f" (to {location})" if location else "")
            + "; a spanfaas gateway answers without redirects: check the URL (--url, SPANFAAS_URL), "
            "and that no name or id in the command is empty"
        )
    doc: Any = None
    if "json" in resp.headers.get("content-type", ""):
        try:
            doc = _json.decode(resp.content)
        except msgspec.DecodeError:
            doc = None
    from_spanfaas = isinstance(doc, dict) and str(doc.get("type", "")).startswith(PROBLEM_BASE)
    if from_spanfaas:
        exc = error_from_problem(doc)
    else:
        cls = _BY_STATUS.get(resp.status_code, InfraError if resp.status_code >= 500 else InvalidRequest)
        snippet = _quoted(resp)
        exc = cls(
            f"{base_url} answered {resp.status_code} {resp.reason_phrase}"
            + (f": {snippet}" if snippet else "")
            + "; is it a spanfaas gateway of this version? check the URL (--url, SPANFAAS_URL)"
        )
    if tried := _tried(resp.headers):  # it failed over, then failed: where it was tried first
        exc.extra["tried"] = list(tried)
    if isinstance(exc, Unauthorized) and not has_token:
        saved = saved_for() if saved_for is not None else None
        hint = (  # the saved token goes only to the URL it was saved with: say so, not "no token"
            f"a token is saved for {saved} only, so none was sent to {base_url}: "
            f"pass --url {saved} if that is the same gateway, or pass --token (or set SPANFAAS_TOKEN)"
            if saved else f"no API token was sent to {base_url}: pass --token or set SPANFAAS_TOKEN "
            "(`spanfaas up` prints the admin token on its first start and saves it for this user)"
        )
        # The gateway's own 401 tells an HTTP client which header to send and where tokens
        # come from: the hint says that for this client, so it replaces it (once is enough).
        exc = Unauthorized(hint if from_spanfaas else f"{exc.message}; {hint}", **exc.extra)
    raise exc


_MARKUP = re.compile(r"<!--.*?-->|<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)


def _quoted(resp: httpx.Response, limit: int = 160) -> str:
    """The body of an answer that is no problem document, to quote in one line: an HTML
    page's text without its markup (a web server's or a proxy's error page), white space
    folded, at most ``limit`` characters."""
    text = resp.text
    if "html" in resp.headers.get("content-type", "") or text.lstrip().startswith("<"):
        text = html.unescape(_MARKUP.sub(" ", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def transport_error(
    exc: httpx.TransportError, *, base_url: str, timeout: float | None, after_timeout: str = "", kept: Callable[[], list[str]] = list
) -> SpanfaasError:
    """The typed error for a request that got no answer; ``kept``: the URLs of the other
    gateways the user has a token for, named when this one is not running."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        said = _unreachable(exc, base_url)
        if said.endswith(NOT_RUNNING):
            others = [u for u in kept() if u != base_url.rstrip("/")]
            if others:
                said += (f"; a token is kept for another gateway: --url {others[0]}" if len(others) == 1
                         else "; tokens are kept for other gateways: " + ", ".join(f"--url {u}" for u in others[:5]))  # fmt: skip
        return InfraUnavailable(said)
    if isinstance(exc, httpx.TimeoutException):  # our wait ran out: nothing is known to have failed
        return WaitTimeout(
            f"spanfaas at {base_url} did not answer within {timeout:g} s; "
            + (after_timeout or "pass a longer timeout (--timeout, or timeout= in the SDK)")
        )
    return InfraError(f"the connection to spanfaas at {base_url} failed: {exc or type(exc).__name__}")


def _unreachable(exc: httpx.TransportError, base_url: str) -> str:
    """Why no connection was made, in the words of what to change: a gateway that is
    not running is the usual case, but not the only one (a host name that does not
    resolve, https to a plain-http gateway, a certificate not trusted)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (ssl.SSLError, socket.gaierror)):
        cause = cause.__cause__ or cause.__context__
    url = httpx.URL(base_url)
    if isinstance(cause, socket.gaierror):
        return f"cannot reach spanfaas at {base_url}: the host name {url.host!r} does not resolve ({cause.strerror}); check the gateway URL (--url, SPANFAAS_URL)"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (
            f"cannot reach spanfaas at {base_url}: its TLS certificate is not trusted ({getattr(cause, 'verify_message', None) or cause}); "
            "point SSL_CERT_FILE at the CA that signed it (verify= in the SDK)"
        )
    if isinstance(cause, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(cause):
        return (
            f"cannot reach spanfaas at {base_url}: it does not speak TLS there; "
            f"if the gateway serves plain http, use {url.copy_with(scheme='http')}"
        )
    if isinstance(cause, ssl.SSLError):
        return f"cannot reach spanfaas at {base_url}: the TLS handshake failed ({cause})"
    return f"cannot reach spanfaas at {base_url}: {NOT_RUNNING}"


NOT_RUNNING = "is `spanfaas up` running?"


# -- upload progress ----------------------------------------------------------


class UploadStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Request body in chunks, reporting progress; usable by both clients."""

    CHUNK = 64 * 1024

    def __init__(self, data: bytes, progress: Progress) -> None:
        self.data = data
        self.progress = progress

    def _chunks(self) -> Iterator[bytes]:
        total = len(self.data)
        for start in range(0, total, self.CHUNK):
            chunk = self.data[start : start + self.CHUNK]
            yield chunk
            self.progress(min(start + len(chunk), total), total)

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks():
            yield chunk


# -- arguments ----------------------------------------------------------------
# The entry points check the types of what they are given: a wrong one went on to fail deep
# inside, as a bare TypeError that named neither the argument nor what it should be.


def wrong_type(arg: str, value: object, expected: str) -> InvalidRequest:
    return InvalidRequest(f"{arg} must be {expected}, not {type(value).__name__}: {value!r:.60}")


def check_str(arg: str, value: object, what: str, *, optional: bool = False) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise wrong_type(arg, value, f"a str ({what})" + (", or None" if optional else ""))


def check_int(arg: str, value: object, *, optional: bool = False) -> None:
    if not ((isinstance(value, int) and not isinstance(value, bool)) or (optional and value is None)):
        raise wrong_type(arg, value, "an int" + (", or None" if optional else ""))


def check_bool(arg: str, value: object) -> None:
    if not isinstance(value, bool):
        raise wrong_type(arg, value, "a bool")


def check_seconds(arg: str, value: object) -> None:
    """A number of seconds, or None (no limit); its range is the caller's to check."""
    if not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))):
        raise wrong_type(arg, value, "a number of seconds (int or float), or None")


def check_map(name: object, concurrency: object, timeout: object) -> None:
    """``map``'s arguments, checked once (not at each item's invoke)."""
    check_str("name", name, "a function's name")
    check_int("concurrency", concurrency)
    check_timeout(timeout)  # type: ignore[arg-type]
    if concurrency < 1:  # type: ignore[operator]
        raise InvalidRequest(f"concurrency must be at least 1, not {concurrency}")


# -- operations ---------------------------------------------------------------


def check_path(path: str) -> None:
    """A name or id of ``.`` or ``..`` is a step of the request's path, not a segment: the URL is
    normalized, and the request reaches another endpoint ("no such endpoint: DELETE /v1").  An
    empty one leaves an empty segment (``/v1/triggers/``), which no endpoint serves."""
    for segment in path.split("?", 1)[0].split("/")[1:]:
        if not segment:
            raise InvalidRequest(
                "a name or id in the command is empty; name the function, invocation, trigger, list or image "
                "(`spanfaas ls` lists the functions)"
            )
        if segment in (".", ".."):
            raise InvalidRequest(
                f"{segment!r} is not a name or an id; name the function, invocation, trigger, list or image "
                "(`spanfaas ls` lists the functions)"
            )


def _fn(name: str) -> str:
    check_str("name", name, "a function's name")
    if not name:  # "/v1/functions/" is another endpoint (its redirect to the list is no answer about a function)
        raise InvalidRequest("the function name is empty; name a deployed function (`spanfaas ls` lists them)")
    if "/" in name:  # the gateway routes on the decoded path: it would answer "no such endpoint"
        raise InvalidRequest(
            f"{name!r} is a path, not a function name; use the name in its spanfaas.toml (`spanfaas ls` lists them)"
        )
    return "/v1/functions/" + quote(name, safe="")


def deploy(path: str | Path, progress: Progress | None = None) -> Op[dict[str, Any]]:
    if not isinstance(path, (str, os.PathLike)):
        raise wrong_type("path", path, "a str or a pathlib.Path (a function directory or .py file)")
    packed = pack(path)
    headers = {"Content-Type": "application/gzip", "Content-Length": str(len(packed.data))}
    if progress is None:
        call = Call("PUT", _fn(packed.name), headers=headers, content=packed.data)
    else:
        call = Call("PUT", _fn(packed.name), headers=headers, stream=UploadStream(packed.data, progress))
    try:
        resp = yield call
    except PayloadTooLarge as exc:  # over max_bundle: which files make it so is known here only
        from spanfaas.gateway.bundle import largest_files  # (imported here: as pack does)

        named = ", ".join(f"{rel} ({format_size(size)})" for rel, size in largest_files(path))
        if named:
            exc.message += f"; its largest files: {named}"
            exc.args = (exc.message,)
        raise
    return _decode(resp)  # type: ignore[no-any-return]


def encode_json(value: Any, what: str = "the event") -> bytes:
    """``value`` as JSON, or an ``InvalidRequest`` that says why it cannot be."""
    try:
        body = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidRequest(f"{what} is not JSON-serializable ({exc}); pass JSON data or bytes via data=") from None
    except UnicodeEncodeError as exc:  # a lone surrogate ('\ud800'): no UTF-8 for it, so no JSON either
        raise InvalidRequest(
            f"{what} has a string that is not valid Unicode ({exc.object[exc.start:exc.end]!r}, a lone surrogate) "
            "and cannot be sent as JSON; pass text that is, or bytes via data="
        ) from None
    if b"null" in body and (where := _non_finite_at(value, what)) is not None:  # msgspec writes NaN and ±Infinity as null
        raise InvalidRequest(
            f"{where}, and JSON has no NaN or Infinity (it would arrive as null); send null (None), a string such as \"NaN\", "
            "or a finite number in its place"
        )
    return body


def _non_finite_at(value: Any, root: str) -> str | None:
    """Where ``value`` holds NaN or ±Infinity, as ``the event['a'][1] is nan``; None if nowhere."""
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{path} is {float.__repr__(item)}"
        elif isinstance(item, dict):
            stack.extend((v, f"{path}[{k!r}]") for k, v in reversed(item.items()))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def encode_payload(event: Any, data: bytes | None) -> tuple[bytes, str]:
    if data is not None:
        if event is not None:  # the body is data=: the event would be dropped without a word
            raise InvalidRequest("pass the event or data=, not both: data= is sent as the body in place of the event")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            fix = "data=text.encode(), or the text as the event (sent as JSON)" if isinstance(data, str) else "bytes, or the value as the event"
            raise InvalidRequest(f"data= takes bytes, not {type(data).__name__}; pass {fix}")
        return bytes(data), "application/octet-stream"
    if isinstance(event, (bytes, bytearray, memoryview)):
        return bytes(event), "application/octet-stream"
    return encode_json(event), "application/json"


def check_timeout(timeout: float | None) -> None:
    """A wait's ``timeout``: None, or a positive number of seconds."""
    check_seconds("timeout", timeout)
    if timeout is not None and not timeout > 0:  # (not >: also NaN)
        raise InvalidRequest(f"timeout must be a positive number of seconds, not {timeout:g}; leave it out to wait as long as the client does")


def invoke(name: str, event: Any = None, *, data: bytes | None = None, timeout: float | None = None) -> Op[InvokeOutput]:
    path = _fn(name) + "/invoke"
    check_timeout(timeout)
    body, ctype = encode_payload(event, data)
    # ``timeout`` bounds the wait for the answer; the function's own limit is its manifest's.
    # An answer that does not come in time carries the invocation's id; it is not known here.
    after = (f"the invocation may still be running: `spanfaas logs {name}` shows it when it ends; "
             "pass a longer timeout=, or, to keep the id of a call you may stop waiting for, "
             "queue it with invoke_async() and wait with result(id, timeout=)")  # fmt: skip
    resp = yield Call("POST", path, headers={"Content-Type": ctype}, content=body, timeout=timeout, after_timeout=after)
    assert resp is not None
    return _output_from_response(name, resp)


def invoke_async(name: str, event: Any = None, *, data: bytes | None = None, idempotency_key: str | None = None) -> Op[str]:
    path = _fn(name) + "/invoke"
    body, ctype = encode_payload(event, data)
    headers = {"Content-Type": ctype}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = _header_value("the idempotency key", idempotency_key)
    resp = yield Call("POST", path, params={"mode": "async"}, headers=headers, content=body)
    return str(_decode(resp)["id"])


def _header_value(what: str, value: object) -> str:
    """``value`` if an HTTP header can carry it as it is: printable ASCII, no space at either end."""
    if not (isinstance(value, str) and value.isascii() and value.isprintable() and value == value.strip(" ")):
        raise InvalidRequest(
            f"{what} {value!r} is not one an HTTP header can carry; pass printable ASCII, without spaces at "
            "either end (a UUID, or an id of the order it stands for)"
        )
    return value


def _inv(invocation_id: str) -> str:
    """The path of an invocation's record, or the ``InvalidRequest`` that says why ``invocation_id`` is none."""
    check_str("invocation_id", invocation_id, "an invocation's id")
    if not invocation_id:
        raise InvalidRequest(
            "the invocation id is empty; `spanfaas logs FUNCTION` shows a function's recent invocations with their ids"
        )
    if problem := invocation_id_problem(invocation_id):  # (one with a '/' or a dot went into the path: "no such endpoint")
        raise InvalidRequest(
            f"{problem}, as invoke_async() and `spanfaas invoke --async` give it; "
            "`spanfaas logs FUNCTION` shows a function's recent invocations with their ids"
        )
    return "/v1/invocations/" + invocation_id


def invocation(invocation_id: str) -> Op[dict[str, Any]]:
    resp = yield Call("GET", _inv(invocation_id))
    return _decode(resp)  # type: ignore[no-any-return]


FINISHED = ("succeeded", "failed")


def result(invocation_id: str, *, wait: bool = True, timeout: float | None = None) -> Op[InvokeOutput]:
    """Poll an invocation until it finishes (backoff 20 ms → 1 s); raise its error if it failed."""
    _inv(invocation_id)
    check_bool("wait", wait)
    check_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.02
    while True:
        rec = yield from invocation(invocation_id)
        status = rec.get("status")
        if status == "succeeded":
            return output_from_record(rec)
        if status == "failed":
            raise error_from_record(rec)
        remaining = None if deadline is None else deadline - time.monotonic()
        if not wait or (remaining is not None and remaining <= 0):
            raise WaitTimeout(
                f"invocation {invocation_id} is still {status}"
                + (f" after {timeout:g}s" if wait else "")
                + f"; wait for it with: spanfaas result {invocation_id} --wait",
                invocation_id=invocation_id,
            )
        yield Sleep(delay if remaining is None else min(delay, remaining))
        delay = min(delay * 1.5, 1.0)


def functions() -> Op[list[dict[str, Any]]]:
    resp = yield Call("GET", "/v1/functions")
    return _decode(resp)["functions"]  # type: ignore[no-any-return]


def function(name: str) -> Op[dict[str, Any]]:
    resp = yield Call("GET", _fn(name))
    return _decode(resp)  # type: ignore[no-any-return]


def remove(name: str) -> Op[None]:
    yield Call("DELETE", _fn(name))


def explain(name: str) -> Op[dict[str, Any]]:
    """Where the next invocation of ``name`` would run: each infrastructure's verdict, score, reasons."""
    resp = yield Call("GET", _fn(name) + "/explain")
    return _decode(resp)  # type: ignore[no-any-return]


def info() -> Op[dict[str, Any]]:
    resp = yield Call("GET", "/v1/info")
    return _decode(resp)  # type: ignore[no-any-return]


def health() -> Op[bool]:
    resp = yield Call("GET", "/healthz")
    return resp is not None and resp.status_code == 200


PAGE_MAX = 1000
"""Records the gateway lists in one page at most."""


STATUSES: tuple[InvocationStatus, ...] = get_args(InvocationStatus)


def check_status(status: InvocationStatus | None) -> None:
    """A listing's ``status`` filter: None (any), or one an invocation can be in."""
    check_str("status", status, f"{', '.join(STATUSES[:-1])} or {STATUSES[-1]}", optional=True)
    if status is not None and status not in STATUSES:
        raise InvalidRequest(
            f"status={status!r} is not an invocation status; use {', '.join(STATUSES[:-1])} or {STATUSES[-1]} "
            "(or leave it out for every status)"
        )


def invocations(
    function: str | None = None, *, limit: int | None = 20, outputs: bool = True, status: InvocationStatus | None = None
) -> Op[list[dict[str, Any]]]:
    """The newest ``limit`` invocations (of ``function``, in ``status``), or all with ``limit=None``:
    the pages of the listing, followed by their ``next`` link (a page may end before its limit:
    it is bounded in size).  An output over the listing's size is left out (``output_left_out``
    says where it is)."""
    check_str("function", function, "a function's name", optional=True)
    check_int("limit", limit, optional=True)
    check_status(status)
    check_bool("outputs", outputs)
    if limit is not None and limit < 1:
        raise InvalidRequest(f"limit={limit} is out of range; ask for 1 or more (None: all)")
    params = {"limit": str(PAGE_MAX if limit is None else min(limit, PAGE_MAX))}
    if function is not None:
        params["function"] = function
    if status is not None:
        params["status"] = status
    if not outputs:  # logs and statuses only: a function's results may be large
        params["output"] = "false"
    out: list[dict[str, Any]] = []
    call = Call("GET", "/v1/invocations", params=params)
    while True:
        page = _decode((yield call))
        out += page["invocations"]
        link = page.get("next")
        if not link or (limit is not None and len(out) >= limit):
            return out if limit is None else out[:limit]
        call = Call("GET", link)


def logs(name_or_id: str, *, limit: int | None = 20, status: InvocationStatus | None = None) -> Op[list[dict[str, Any]]]:
    """Invocation records with their logs: one invocation by id, or a function's latest (all with
    ``limit=None``); only those in ``status``, when given."""
    check_str("name_or_id", name_or_id, "a function's name or an invocation's id")
    check_int("limit", limit, optional=True)
    if not name_or_id:
        raise InvalidRequest("name a function or an invocation id (it is empty); list functions with `spanfaas ls`")
    check_status(status)
    elsewhere = ""
    if is_invocation_id(name_or_id):  # (a function may have a name of that form too)
        try:
            record = yield from invocation(name_or_id)
            return [record] if status is None or record.get("status") == status else []
        except NotFound as exc:
            elsewhere = f"; {RUNNING_ELSEWHERE}" if RUNNING_ELSEWHERE in exc.message else ""
    try:
        return (yield from invocations(name_or_id, limit=limit, outputs=False, status=status))
    except NotFound as exc:  # the gateway's word on the deployed ones (a near miss named) is kept
        deployed = exc.message.partition("has no invocations; ")[2] or "list functions with `spanfaas ls`"
        raise NotFound(f"no invocation or function named {name_or_id!r}; {deployed}{elsewhere}") from None


def create_token(name: str, scopes: list[str]) -> Op[dict[str, Any]]:
    check_str("name", name, "the token's name")
    if not (isinstance(scopes, (list, tuple)) and all(isinstance(scope, str) for scope in scopes)):
        raise wrong_type("scopes", scopes, "a list of str (e.g. ['invoke'])")
    resp = yield Call("POST", "/v1/tokens", headers={"Content-Type": "application/json"}, content=msgspec.json.encode({"name": name, "scopes": scopes}))
    return _decode(resp)  # type: ignore[no-any-return]
