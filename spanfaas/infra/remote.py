"""The ``remote`` infrastructure: another spanfaas gateway (a *site*) over HTTP.

The site is reached with its own token (scopes ``deploy`` and ``invoke``);
its capabilities come from its ``GET /v1/info`` (every infrastructure it
lists, folded into one), overridden by what the operator declared for it in
``[[infrastructures]]``.

A deploy ships the bundle with its manifest rewritten: placement was decided
here, so the site gets only the parts of the policy that are about what the
function needs (``gpu``, ``min_memory``) and how to prefer among its own
infrastructures, not our names, regions, labels or prices.

Errors: the function's own failure (a Problem whose type is one of the
function-* slugs) comes back as a ``Result`` with ``error``; a request the
site rejects as wrong is raised as the same typed error, its message naming
the site; a site that is full (429) is ``TooManyRequests`` with its
Retry-After, which the scheduler overflows from without counting it as a
failure (nor as a run: ``InvokeContext.on_refused`` takes back the start told
when the request left); everything else
(connection refused, 5xx, a token it refuses) is ``InfraUnavailable``, so
the scheduler fails over.  Of those, a 503 to a call ran nothing of it either (its start
is taken back too), unless the site says it may have (``infra-interrupted``); one with a
Retry-After is busy, not down (the scheduler's breaker does not count it).  A refusal of the
site's own (a 4xx problem of a spanfaas gateway) ran nothing and its start is taken back; its
502 (the platform failed after the run started), its unexpected 500 and what is not its own
problem (a proxy's page) may have run, and their start stands (``_ran_nothing``).

An answer is taken for what the protocol says it is only when it is one: a
site's 200 must carry what a spanfaas gateway sends (its info, the record of
the version deployed, an invocation's result headers), and a 404 to a remove
must be the site's own "function not found".  Anything else (a proxy's login
page, a truncated body, another function's record) is ``InfraUnavailable``
naming the site and saying what it sent.  A result's duration that cannot be (not a number,
negative, longer than the call took here) is replaced by the call's time measured here: the
result itself is real, and failing it over would run the function twice.

An event's invocation sends the event's CloudEvent attributes along
(``x-spanfaas-event``): the function's ``context.event`` on the site, as here.
Every invocation sends our id of it (``x-spanfaas-origin-id``): the function's
``context.invocation_id`` on the site, as here, and the ``origin`` of the site's
record (whose own id stays the site's), so their logs and records join.  A call
failed over to the site with part of its timeout used up sends what is left
(``x-spanfaas-timeout``): the site cuts the function there, as we would.  A site
that failed the call over itself says where it tried it first (``x-spanfaas-tried-reasons``):
the result's ``tried`` keeps that under the site's name (``eu/far: why``), so the caller
here is told, as of a failover of ours; and its ``infra`` is the path to where the site
ran it (``eu/local``).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import math
import re
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from spanfaas.config import InfraConfig
from spanfaas.errors import (
    PROBLEM_BASE,
    FunctionNotFound,
    InfraInterrupted,
    InfraUnavailable,
    InvalidRequest,
    SpanfaasError,
    TooManyRequests,
    error_from_problem,
    plural,
)
from spanfaas.infra.bundles import manifest_toml, pack_dir
from spanfaas.model import (
    MANIFEST_NAME,
    Bundle,
    ErrorInfo,
    FunctionSpec,
    InfraInfo,
    InvokeContext,
    Policy,
    Result,
    parse_manifest,
    single_file_manifest,
)

__all__ = ["RemoteInfrastructure", "site_spec"]

log = logging.getLogger("spanfaas.infra.remote")

_KINDS = {
    "function-error": "error",
    "function-timeout": "timeout",
    "function-out-of-memory": "oom",
    "function-crashed": "crashed",
    "function-failed": "error",
}


_LONGEST_TIMEOUT = 3600.0
"""The longest ``resources.timeout`` a manifest may ask for: how long a site may drain a function
we do not know the timeout of (a remove owed since before a restart)."""


class _Deployed(msgspec.Struct):
    """The part of a site's answer to a deploy that says which version now serves."""

    name: str
    version: int
    digest: str


def site_spec(spec: FunctionSpec) -> FunctionSpec:
    """The spec as the site should see it: our placement parts removed, and our
    triggers (events are routed where they arrive; the site only runs the
    invocations — a schedule there would fire a second time)."""
    p = spec.policy
    policy = Policy(gpu=p.gpu, min_memory=p.min_memory, prefer=[x for x in p.prefer if x != "locality"], fallback=p.fallback)
    return msgspec.structs.replace(spec, policy=policy, triggers=[])


def _pack_for_site(spec: FunctionSpec, path: str) -> bytes:
    """The bundle as the site gets it: its manifest rewritten (``site_spec``) -- unless it is the
    one generated for a single-file function and the rewrite would change nothing: it goes as
    is, so the site knows the bundle for a single file as we do (a missing handler is then
    to be defined in that file: its user has no spanfaas.toml to be told about)."""
    ours = site_spec(spec)
    try:
        text = (Path(path) / MANIFEST_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    if text == single_file_manifest(spec.module) and parse_manifest(text) == ours:
        return pack_dir(path)
    return pack_dir(path, manifest=manifest_toml(ours))


class RemoteInfrastructure:
    kind = "remote"

    def __init__(self, config: InfraConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = config.name
        self.config = config
        self.url = config.address.rstrip("/")
        headers = {"authorization": f"Bearer {config.token}"} if config.token else {}
        self.http = httpx.AsyncClient(
            base_url=self.url, headers=headers, transport=transport,
            timeout=httpx.Timeout(config.timeout, read=None),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )  # fmt: skip
        self._bundles: dict[str, tuple[FunctionSpec, Bundle]] = {}
        self._packed: dict[str, bytes] = {}
        self.inflight = 0
        self.own_gateway = ""
        """The id of the gateway this adapter works for (``SpanningInfrastructure.served_by``)."""

    @property
    def answer_slack(self) -> float:
        """Seconds an invocation's answer is waited for past its timeout (``AnswersLate``): the
        site's ``timeout``.  The site cuts the function at its timeout and answers; one that has
        not answered by then and this is taken for one that never will."""
        return self.config.timeout

    async def close(self) -> None:
        await self.http.aclose()

    # -- http ----------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, timeout: float, **kw: Any) -> httpx.Response:
        """``timeout``: seconds its answer may take (connecting: the site's ``timeout``)."""
        try:
            return await self.http.request(method, path, timeout=httpx.Timeout(self.config.timeout, read=timeout), **kw)
        except httpx.ReadTimeout:
            raise InfraUnavailable(
                f"site '{self.name}' at {self.url} did not answer {method} {path} within {timeout:g} s "
                "(it may still be working on it)"
            ) from None
        except httpx.TransportError as exc:
            raise InfraUnavailable(f"site '{self.name}' is unreachable: {_unreachable(exc, self.url, self.config.timeout)}") from None

    def _error(self, resp: httpx.Response, what: str) -> SpanfaasError:
        doc = _doc(resp)
        if resp.is_redirect:  # not followed: our token would go wherever it points
            where = _printable(resp.headers.get("location", "")[:300]) or "(no Location)"
            return InfraUnavailable(
                f"{what} on site '{self.name}' ({self.url}) was redirected ({resp.status_code}) to {where}; "
                "set the site's address in [[infrastructures]] to where it serves (spanfaas does not follow "
                "redirects: they would carry the site's token elsewhere)"
            )
        detail = _printable(str(doc.get("detail") or resp.text[:300] or resp.reason_phrase))
        if resp.status_code in (401, 403):
            return InfraUnavailable(f"site '{self.name}' refuses our token ({resp.status_code}): {detail}; check its token in [[infrastructures]]")
        if resp.status_code == 429:  # backpressure, not a failure: the scheduler overflows, the caller waits
            retry_after = doc.get("retry_after")
            if not isinstance(retry_after, int):
                header = resp.headers.get("retry-after", "")
                retry_after = int(header) if header.isdigit() else None
            extra = {"retry_after": retry_after} if retry_after is not None else {}
            return TooManyRequests(f"site '{self.name}' is full: {detail}", **extra)
        if resp.status_code == 404 and str(doc.get("type", "")).endswith("function-not-found"):
            return FunctionNotFound(f"site '{self.name}' does not have the function: {detail}")
        if 400 <= resp.status_code < 500 and doc.get("type"):
            err = error_from_problem({**doc, "detail": detail})
            if isinstance(err, InvalidRequest):  # judged by the site's own state (its lists, limits): say so
                return type(err)(f"site '{self.name}' ({self.url}) refused {what}: {err.message}", **err.extra)
        return InfraUnavailable(f"{what} on site '{self.name}' failed ({resp.status_code}): {detail}")

    def _junk(self, resp: httpx.Response, what: str, expected: str) -> InfraUnavailable:
        """A site's answer with a success status whose body is not what the protocol says."""
        return InfraUnavailable(
            f"site '{self.name}' ({self.url}) answered {what} with {resp.status_code} but not with {expected}: "
            f"it sent {_got(resp)}; check that its address in [[infrastructures]] is a spanfaas gateway's"
        )

    # -- the protocol ----------------------------------------------------------------------

    async def info(self) -> InfraInfo:
        resp = await self._request("GET", "/v1/info", timeout=self.config.timeout)
        if resp.status_code != 200:
            raise self._error(resp, "GET /v1/info")
        doc = _doc(resp)
        try:
            infos = msgspec.convert(doc["infrastructures"], list[InfraInfo])
        except (KeyError, msgspec.ValidationError) as exc:
            why = "no infrastructures" if isinstance(exc, KeyError) else f"{exc}"
            raise self._junk(resp, "GET /v1/info", f"a spanfaas info ({_printable(why)})") from None
        if self.own_gateway and doc.get("gateway") == self.own_gateway:  # a deploy there would wait on itself
            raise InfraUnavailable(
                f"site '{self.name}' at {self.url} is this gateway itself; point its address at another spanfaas site, "
                "or remove it from [[infrastructures]]"
            )
        if not infos:
            raise InfraUnavailable(f"site '{self.name}' lists no infrastructures")
        healthy = [i for i in infos if i.healthy]
        first = infos[0]
        return InfraInfo(
            name=self.name, kind=self.kind, region=_printable(first.region), labels=dict(first.labels),
            gpu=any(i.gpu for i in infos), max_memory=max(i.max_memory for i in infos),
            max_timeout=max(i.max_timeout for i in infos), python=first.python,
            isolation=sorted({m for i in infos for m in i.isolation}),
            price_per_gb_s=min(i.price_per_gb_s for i in infos), datasets=sorted({d for i in infos for d in i.datasets}),
            images=any(i.images for i in infos),
            healthy=bool(healthy), reason="" if healthy else _all_down(infos), queue_depth=sum(i.queue_depth for i in infos),
            free_slots=sum(i.free_slots for i in healthy), instances=sum(i.instances for i in infos),
            functions=max(i.functions for i in infos), ewma_latency_ms=first.ewma_latency_ms,
            error_rate=max((i.error_rate for i in healthy), default=0.0),
        )  # fmt: skip

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        data = self._packed.get(bundle.digest)
        if data is None:
            data = await asyncio.to_thread(_pack_for_site, spec, bundle.path)
        resp = await self._request(
            "PUT", f"/v1/functions/{spec.name}", content=data, headers={"content-type": "application/gzip"},
            timeout=max(self.config.timeout, 60.0),
        )  # fmt: skip
        if resp.status_code not in (200, 201):
            raise self._error(resp, f"deploying '{spec.name}'")
        self._check_deployed(resp, spec.name, hashlib.sha256(data).hexdigest())
        old = self._bundles.get(spec.name)
        if old is not None and old[1].digest != bundle.digest:
            self._packed.pop(old[1].digest, None)
        self._bundles[spec.name] = (spec, bundle)
        self._packed[bundle.digest] = data

    def _check_deployed(self, resp: httpx.Response, name: str, digest: str) -> None:
        """The site's answer to a deploy is the record of the bundle we sent, under its name."""
        what, expected = f"deploying '{name}'", f"the record of '{name}' with digest {digest[:12]}"
        try:
            got = msgspec.json.decode(resp.content, type=_Deployed)
        except msgspec.DecodeError as exc:  # (ValidationError too): HTML, truncated JSON, another shape
            raise self._junk(resp, what, f"{expected} ({_printable(str(exc))})") from None
        if got.name != name or got.digest != digest or got.version < 1:
            raise self._junk(
                resp, what, f"{expected}; that record is of '{_printable(got.name)}' version {got.version} "
                f"with digest {_printable(got.digest[:12])}",
            )  # fmt: skip

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result:
        timeout = min(t for t in (spec.resources.timeout, ctx.timeout) if t is not None) + self.answer_slack
        self.inflight += 1
        try:
            t0 = time.perf_counter()
            resp = await self._invoke(spec, payload, ctx, timeout)
            if resp.status_code == 404 and spec.name in self._bundles:
                err = self._error(resp, "invoking")
                if isinstance(err, FunctionNotFound):  # the site lost it (a fresh data dir): deploy again, once
                    _refused(ctx)
                    await self.deploy(*self._bundles[spec.name])
                    t0 = time.perf_counter()
                    resp = await self._invoke(spec, payload, ctx, timeout)
            elapsed_ms = (time.perf_counter() - t0) * 1000
        finally:
            self.inflight -= 1
        if resp.status_code == 503:
            raise self._unavailable(resp, spec.name, ctx)
        if _ran_nothing(resp):  # the start told when it left was none
            _refused(ctx)
        h = resp.headers
        duration = self._duration(h.get("x-spanfaas-duration-ms"), elapsed_ms, spec.name)
        cold = h.get("x-spanfaas-cold") == "true"
        if resp.status_code == 200:
            if "x-spanfaas-invocation-id" not in h:  # every result a spanfaas gateway sends has it
                raise self._junk(resp, f"invoking '{spec.name}'", "a result (no x-spanfaas-invocation-id header)")
            return Result(
                invocation_id=ctx.invocation_id, function=spec.name, output=resp.content,
                content_type=h.get("content-type", "application/octet-stream"), duration_ms=duration, cold=cold,
                infra=self._ran_on(h), logs=_logs(h.get("x-spanfaas-logs")), tried=self._tried(h),
            )  # fmt: skip
        if resp.headers.get("content-type", "").startswith("application/problem+json"):
            doc = _doc(resp)
            kind = _KINDS.get(str(doc.get("type", "")).removeprefix(PROBLEM_BASE))
            if kind is not None:
                error = ErrorInfo(
                    kind=kind,  # type: ignore[arg-type]
                    type=str(doc.get("error_type", "")), message=_message(doc), traceback=str(doc.get("traceback", "")),
                    exit_status=doc.get("exit_status"),
                )  # fmt: skip
                return Result(
                    invocation_id=ctx.invocation_id, function=spec.name, error=error, logs=str(doc.get("logs", "")),
                    duration_ms=duration, cold=cold, infra=self._ran_on(h), tried=self._tried(h),
                )  # fmt: skip
        raise self._error(resp, f"invoking '{spec.name}'")

    def _unavailable(self, resp: httpx.Response, name: str, ctx: InvokeContext) -> InfraUnavailable:
        """A site's 503 to a call: it ran nothing of it (a site that stops, or has nowhere to
        run the function now; a proxy with no site behind it), so the start told when the
        request left is taken back (``on_refused``), as for a 429, and the scheduler fails
        over at once -- unless the site says the call may have run there (a spanfaas gateway's
        ``infra-interrupted``: it stopped during the call, or lost what ran it), a start that stands."""
        doc = _doc(resp)
        detail = _printable(str(doc.get("detail") or resp.text[:300] or resp.reason_phrase))
        if doc.get("type") == _INTERRUPTED:
            return InfraUnavailable(f"invoking '{name}' on site '{self.name}' failed (503) after it may have started there: {detail}")
        _refused(ctx)
        header = resp.headers.get("retry-after", "")
        extra = {"retry_after": int(header)} if header.isdigit() else {}
        return InfraUnavailable(f"site '{self.name}' ran nothing of the call (503): {detail}", **extra)

    def _ran_on(self, h: httpx.Headers) -> str:
        """Where the site ran the call: this site's name; when it failed the call over itself
        (``x-spanfaas-tried``), the path to where it ran, from its ``x-spanfaas-infra``
        (``eu/local``: eu tried its site far first, then ran it on its local runtime), as the
        names of ``tried`` are."""
        ran = _printable(h.get("x-spanfaas-infra", "").strip())
        if h.get("x-spanfaas-tried") is None or not ran:
            return self.name
        return f"{self.name}/{ran}"

    def _tried(self, h: httpx.Headers) -> list[str]:
        """Where the site tried the call before what ran it there (it failed over itself), as
        ours: each ``"site/name: why"`` -- the path to that infrastructure, so that a site's
        site's read ``eu/far/local``.  From ``x-spanfaas-tried-reasons``; from a site that sends
        none, the names alone of ``x-spanfaas-tried``."""
        names = h.get("x-spanfaas-tried")
        if names is None:
            return []
        entries: list[str] | None = None
        reasons = h.get("x-spanfaas-tried-reasons")
        if reasons is not None:
            try:
                entries = msgspec.json.decode(reasons, type=list[str])
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("site '%s' sent an x-spanfaas-tried-reasons that is no JSON array of strings; took the "
                            "names of its x-spanfaas-tried", self.name)  # fmt: skip
        if entries is None:
            entries = [n.strip() for n in names.split(",") if n.strip()]
        return [f"{self.name}/{_printable(e)}" for e in entries]

    def _duration(self, header: str | None, elapsed_ms: float, name: str) -> float:
        """How long the function ran, as the site says (``x-spanfaas-duration-ms``); when what it
        says cannot be (not a number, negative, NaN, longer than the whole call took here), the
        call's time as measured here.  Not a failure: the function ran and its answer is real (a
        failover would run it a second time), and a junk number would poison the latency the
        scheduler weighs."""
        if header is None:
            return elapsed_ms
        try:
            said = float(header)
        except ValueError:
            said = math.nan
        if math.isfinite(said) and 0 <= said <= elapsed_ms:
            return said
        log.warning("site '%s' sent x-spanfaas-duration-ms %r for '%s', which cannot be (the call took %.3f ms here); "
                    "took the time measured here", self.name, _printable(header[:100]), name, elapsed_ms)  # fmt: skip
        return elapsed_ms

    async def _invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext, timeout: float) -> httpx.Response:
        headers = {"content-type": ctx.content_type, "x-spanfaas-logs": "include"}
        if _ORIGIN_ID.fullmatch(ctx.invocation_id):  # ours: the function's context.invocation_id there, its record's origin
            headers["x-spanfaas-origin-id"] = ctx.invocation_id
        if ctx.timeout is not None and ctx.timeout < spec.resources.timeout:  # what is left of its deadline here
            headers["x-spanfaas-timeout"] = f"{max(math.floor(ctx.timeout * 1000) / 1000, 0.001):.3f}"  # (never rounded up)
        if ctx.event is not None:  # the function's context.event there, as here (ASCII: a header)
            headers["x-spanfaas-event"] = json.dumps(ctx.event, separators=(",", ":"), default=str)
        on_start, told = ctx.on_start, False

        def leaves() -> None:
            nonlocal told
            if on_start is not None and not told:
                told = True
                on_start()

        async def trace(event: str, info: dict[str, Any]) -> None:
            # The request leaves for the site (connected): the run started, as far as we can tell.
            # Not before: a call refused at the connection (nothing listens, no route, DNS) never left.
            if event.endswith(".send_request_headers.started"):
                leaves()

        resp = await self._request(
            "POST", f"/v1/functions/{spec.name}/invoke", content=payload, headers=headers, timeout=timeout,
            extensions={"trace": trace},
        )  # fmt: skip
        leaves()  # (a transport that does not trace, as a test's: it answered, so the call left)
        return resp

    async def remove(self, name: str) -> None:
        entry = self._bundles.pop(name, None)
        if entry is not None:
            self._packed.pop(entry[1].digest, None)
        # The site drains the calls it runs (each up to the function's timeout) before it
        # answers: waited for that long, not for ever (a hung site held our close() for ever).
        drain = entry[0].resources.timeout if entry is not None else _LONGEST_TIMEOUT
        resp = await self._request("DELETE", f"/v1/functions/{name}", timeout=drain + self.config.timeout)
        if resp.status_code == 204:
            return
        err = self._error(resp, f"removing '{name}'")
        if not isinstance(err, FunctionNotFound):  # (a 404 that is not the site's own says nothing of the function)
            raise err

    async def prewarm(self, name: str) -> bool:
        return False


def _doc(resp: httpx.Response) -> dict[str, Any]:
    """The JSON object a site sent, or ``{}`` when its body is not one."""
    try:
        doc = resp.json()
    except ValueError:  # (not JSON, or not UTF-8)
        return {}
    return doc if isinstance(doc, dict) else {}


def _got(resp: httpx.Response) -> str:
    """What a site sent, in short: its type, size and first characters."""
    kind = resp.headers.get("content-type") or "no content-type"
    text = resp.content[:200].decode("utf-8", "replace")
    more = "..." if len(resp.content) > 200 else ""
    return _printable(f"{kind}, {plural(len(resp.content), 'byte')}: {text!r}{more}")


def _logs(header: str | None) -> str:
    """The function's logs the site sent with its result (``x-spanfaas-logs``, a JSON string)."""
    if not header:
        return ""
    try:
        return msgspec.json.decode(header, type=str)
    except msgspec.DecodeError:
        return f"(the site sent logs that are not a JSON string: {header[:200]!r})"


def _message(doc: dict[str, Any]) -> str:
    """The function's own message: the Problem's detail without the 'Type: ' prefix the gateway adds."""
    detail = str(doc.get("detail", ""))
    prefix = f"{doc.get('error_type', '')}: "
    return detail.removeprefix(prefix) if doc.get("error_type") else detail


def _all_down(infos: list[InfraInfo]) -> str:
    """Why a site whose every infrastructure is down is down: each one's reason."""
    return "; ".join(f"its {_printable(i.name)}: {_printable(i.reason) or 'unhealthy'}" for i in infos)


_REFUSED = frozenset({401, 403, 404, 429})
"""Answers to an invocation that say the site ran nothing of it, whoever sent them (a proxy's
too): our token refused, the function not there, its queue full (``InvokeContext.on_refused``);
and a 503 that does not say otherwise (``RemoteInfrastructure._unavailable``)."""


def _ran_nothing(resp: httpx.Response) -> bool:
    """Whether a site's answer to a call, neither a result nor a 503, says it ran nothing of it:
    one of ``_REFUSED``, or a refusal of the site's own (a 4xx problem of a spanfaas gateway: the
    request judged, by its own limits and lists, before anything ran).  A 500 or 502 says
    nothing of the sort: the function's own failure ran (a result), a site that failed before
    the run answers 503 ``infra-unavailable``, and anything else (its 502 ``infra-error``: the
    platform failed after the run started; its unexpected 500; a proxy's page) may have run."""
    if resp.status_code in _REFUSED:
        return True
    return 400 <= resp.status_code < 500 and _own_problem(resp)


def _own_problem(resp: httpx.Response) -> bool:
    """A problem document a spanfaas gateway sent (its type is one of ours), not a proxy's page."""
    if not resp.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    return str(_doc(resp).get("type", "")).startswith(PROBLEM_BASE)

_INTERRUPTED = PROBLEM_BASE + InfraInterrupted.slug
"""The type of a site's 503 to a call that may have run there."""


def _refused(ctx: InvokeContext) -> None:
    if ctx.on_refused is not None:
        ctx.on_refused()


_ORIGIN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
"""An invocation id a site takes in x-spanfaas-origin-id (gateway/invoke.py); ours all are."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _unreachable(exc: httpx.TransportError, url: str, timeout: float) -> str:
    """Why a request did not get to ``url``, in plain words (no exception class):
    ``connection refused at http://host:port``."""
    errno_ = next((e.errno for e in _chain(exc) if isinstance(e, OSError) and e.errno), None)
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection to {url} within {timeout:g} s"
    if any(isinstance(e, socket.gaierror) for e in _chain(exc)):
        return f"the host of {url} cannot be resolved ({_printable(str(exc)) or 'no address'})"
    if errno_ == errno.ECONNREFUSED or isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower():
        return f"connection refused at {url}"
    if errno_ in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return f"no route to {url}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect to {url}" + (f" ({_printable(str(exc))})" if str(exc) else "")
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer from {url} within {timeout:g} s"
    return f"the connection to {url} failed" + (f" ({_printable(str(exc))})" if str(exc) else "")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _printable(text: str) -> str:
    """A site's words with its control characters escaped (``\\x1b``): they reach our log and
    the user's terminal (``spanfaas info``, ``explain``), where ESC sequences would act.
    New lines and tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
