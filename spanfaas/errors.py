"""One exception hierarchy for spanfaas.

Every error knows the HTTP status it maps to, the CLI exit code, and a short
slug used as the Problem Details ``type`` (RFC 9457).  The tree keeps three
kinds of failure apart: the request was wrong, the platform failed, and the
user's function failed::

    SpanfaasError                       500  exit 1
    ├── InvalidRequest                  400  exit 2
    │   ├── InvalidManifest             400
    │   ├── InvalidBundle               400
    │   ├── InvalidPayload              400
    │   ├── PayloadTooLarge             413
    │   ├── ValueRefused                422   a value of the request the store cannot hold
    │   ├── ImageRejected               400   packages not approved by the curated lists
    │   └── ImageBuildFailed            400   the resolver or installer failed (its message)
    ├── Unauthorized                    401  exit 3
    ├── Forbidden                       403  exit 3
    ├── NotFound                        404  exit 4
    │   ├── FunctionNotFound            404
    │   └── InvocationNotFound          404
    ├── Conflict                        409  exit 5
    ├── TooManyRequests                 429  exit 6
    ├── WaitTimeout                     504  exit 1   (the client stopped waiting; also a TimeoutError)
    ├── InfraError                      502  exit 7   (the platform failed)
    │   ├── InfraUnavailable            503   nothing of the call ran (a site, the store, the gateway unavailable)
    │   │   └── InfraInterrupted        503   ... after the call may have started: it may have run, in part
    │   ├── DeployNotRecorded           500   the store failed to record a deploy, taken back
    │   ├── ImageBuildTimeout           504   uv ran past [images] build_timeout
    │   └── ImageSourceUnreachable      502   uv could not reach the package index or wheelhouse
    └── FunctionFailed                  500  exit 8   (the user's function failed)
        ├── FunctionError               500           handler raised
        ├── FunctionTimeout             504           deadline passed, instance killed
        ├── FunctionOutOfMemory         500           memory limit hit
        └── FunctionCrashed             500           instance died (exit, signal)
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "DeployNotRecorded",
    "Forbidden",
    "FunctionCrashed",
    "FunctionError",
    "FunctionFailed",
    "FunctionNotFound",
    "FunctionOutOfMemory",
    "FunctionTimeout",
    "ImageBuildFailed",
    "ImageBuildTimeout",
    "ImageRejected",
    "ImageSourceUnreachable",
    "InfraError",
    "InfraInterrupted",
    "InfraUnavailable",
    "InvalidBundle",
    "InvalidManifest",
    "InvalidPayload",
    "InvalidRequest",
    "InvocationNotFound",
    "NotFound",
    "PayloadTooLarge",
    "SpanfaasError",
    "TooManyRequests",
    "Unauthorized",
    "ValueRefused",
    "WaitTimeout",
    "error_class",
    "error_from_problem",
    "format_size",
    "format_sizes",
    "like_deployed",
]

PROBLEM_BASE = "https://spanfaas.dev/problems/"


class SpanfaasError(Exception):
    """Root of every error spanfaas raises on purpose."""

    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    @property
    def tried(self) -> tuple[str, ...]:
        """Where a call that failed over was tried before it failed where it ran, each as
        ``"name: why it failed there"`` (``"eu/far: why"`` for what site ``eu`` tried); empty when
        it failed where it was first placed.  The SDK fills it from ``x-spanfaas-tried-reasons``
        or the invocation record's ``tried`` (as ``InvokeOutput.tried`` of a call that ran)."""
        return tuple(str(t) for t in self.extra.get("tried") or ())

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """Render as an RFC 9457 Problem Details object."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.message,
        }
        if instance is not None:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


class InvalidRequest(SpanfaasError):
    status, exit_code, slug, title = 400, 2, "invalid-request", "Invalid request"


class InvalidManifest(InvalidRequest):
    slug, title = "invalid-manifest", "Invalid function manifest"


class InvalidBundle(InvalidRequest):
    slug, title = "invalid-bundle", "Invalid function bundle"


class InvalidPayload(InvalidRequest):
    slug, title = "invalid-payload", "Invalid payload"


class PayloadTooLarge(InvalidRequest):
    status, slug, title = 413, "payload-too-large", "Payload too large"


_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_size(n: int, decimals: int = 1) -> str:
    """A size as people read it in a message: '900 bytes', '97.7 KiB', '12.0 MiB'."""
    for unit, size in _UNITS:
        if n >= size:
            return f"{n / size:.{decimals}f} {unit}"
    return plural(n, "byte")


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 image``, ``2 images`` (``many``: an irregular plural)."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def format_sizes(size: int, limit: int) -> tuple[str, str]:
    """A size and the limit it passed, in one style; with more digits, or in bytes,
    when they would read alike (a size just over its limit)."""
    for decimals in (1, 2):
        pair = format_size(size, decimals), format_size(limit, decimals)
        if pair[0] != pair[1]:
            return pair
    return plural(size, "byte"), plural(limit, "byte")


class IdempotencyKeyReused(InvalidRequest):
    """An ``Idempotency-Key`` sent again with another request than the one it first came with."""

    status, slug, title = 422, "idempotency-key-reused", "Idempotency key reused"


class ValueRefused(InvalidRequest):
    """A value of the request the store refused (the store's ``RecordRefused``): sent again as
    it is, it is refused again; the message names it and says what to change."""

    status, slug, title = 422, "value-refused", "Value refused by the store"


class ImageRejected(InvalidRequest):
    """An image request asks for packages (or ranges) the selected curated lists do not approve."""

    slug, title = "image-rejected", "Image request rejected"


class ImageBuildFailed(InvalidRequest):
    """uv could not resolve or install an image; the message is the resolver's."""

    slug, title = "image-build-failed", "Image build failed"


class Unauthorized(SpanfaasError):
    status, exit_code, slug, title = 401, 3, "unauthorized", "Unauthorized"


class Forbidden(SpanfaasError):
    status, exit_code, slug, title = 403, 3, "forbidden", "Forbidden"


class NotFound(SpanfaasError):
    status, exit_code, slug, title = 404, 4, "not-found", "Not found"


class FunctionNotFound(NotFound):
    slug, title = "function-not-found", "Function not found"


def like_deployed(name: str, deployed: Collection[str], *, all_up_to: int = 10) -> str:
    """What a message about a function ``name`` that is not deployed says of the ``deployed``
    ones: their names when they are few; else up to 5 named like ``name`` and how many there
    are (with 1,000 functions, a list of them all is no message).  A few listed, the one a
    near miss (``helo``, ``Hello``, ``json_transform``) meant is named after them."""
    if len(deployed) <= all_up_to:
        listed = "deployed: " + (", ".join(sorted(deployed)) or "none")
        if len(deployed) < 2:  # (a list of one is the suggestion)
            return listed
        meant = _closest(name, deployed)
        return f"{listed}; did you mean {meant}?" if meant else listed
    import difflib  # (here: a deploy-time message; the zygote, and so every template, does without it)

    close = difflib.get_close_matches(name, deployed, n=5)
    if not close:
        return f"none of the {len(deployed)} deployed functions has a name like it (`spanfaas ls` lists them)"
    return f"did you mean {', '.join(close)}? ({len(deployed)} functions are deployed; `spanfaas ls` lists them)"


def _closest(name: str, deployed: Collection[str]) -> str | None:
    """The deployed name most like ``name``, compared as names are written (lowercase, '-'),
    so that a capital or an underscore is no miss at all."""
    import difflib

    by_form = {d.lower().replace("_", "-"): d for d in deployed}
    close = difflib.get_close_matches(name.lower().replace("_", "-"), by_form, n=1)
    return by_form[close[0]] if close else None


class InvocationNotFound(NotFound):
    slug, title = "invocation-not-found", "Invocation not found"


RUNNING_ELSEWHERE = (
    "on a shared store, a sync invocation running on another gateway is shown once it has finished: "
    "ask the gateway that runs it, or again then"
)
"""Said with an invocation not found by a gateway on a shared store: a sync call is shown
(GET /v1/invocations/ID, ``spanfaas logs``) by the gateway that runs it while it runs, by
every gateway once its record is stored (docs/shared-store.md)."""


class Conflict(SpanfaasError):
    status, exit_code, slug, title = 409, 5, "conflict", "Conflict"


class TooManyRequests(SpanfaasError):
    status, exit_code, slug, title = 429, 6, "too-many-requests", "Too many requests"


class WaitTimeout(SpanfaasError, TimeoutError):
    """The client stopped waiting (``--timeout``, ``timeout=``): no answer, or no outcome yet, in time.

    Nothing failed: the invocation may still be running, and finish.  Raised
    on the client side only; a ``TimeoutError`` too.
    """

    status, exit_code, slug, title = 504, 1, "wait-timeout", "Timed out waiting"


class InfraError(SpanfaasError):
    """The platform (an infrastructure, a worker, the network) failed."""

    status, exit_code, slug, title = 502, 7, "infra-error", "Infrastructure error"


class InfraUnavailable(InfraError):
    """The platform could not take the request now.  Of an invocation (503
    ``infra-unavailable``): nothing of it ran -- sent again, it runs once.  One that may
    have run is ``InfraInterrupted``."""

    status, slug, title = 503, "infra-unavailable", "Infrastructure unavailable"


class InfraInterrupted(InfraUnavailable):
    """The platform failed after an invocation may have started (its gateway stopped during
    it, the site or the instance running it was lost, every failover failed): it may have
    run, in part -- sent again, it may run twice.  A 503 as ``InfraUnavailable`` (clients
    that retry on 503 still do), with its own type, so that a gateway that placed the call
    on this site tells it from a 503 that ran nothing, which it fails over from as from
    a 429 (``infra/remote.py``)."""

    slug, title = "infra-interrupted", "Infrastructure failed during the invocation"


class DeployNotRecorded(InfraError):
    """A deploy the store failed to record in a way that is no outage (``StoreUnavailable``
    says those, 503): the new version was taken off the infrastructure again, the one
    before serves.  The detail says so; the gateway's log has the store's error."""

    status, slug, title = 500, "deploy-not-recorded", "Deploy not recorded"


class ImageBuildTimeout(InfraError):
    """An image build (uv resolving or installing) ran past ``[images] build_timeout``.
    Not the request's fault: the package sources or the gateway's machine were too slow."""

    status, slug, title = 504, "image-build-timeout", "Image build timed out"


class ImageSourceUnreachable(InfraError):
    """uv could not reach a package source (the index: connection, DNS, a 5xx;
    a ``find_links`` directory).  Not the request's fault: the same request
    may build once the source is back."""

    slug, title = "image-source-unreachable", "Package source unreachable"


class FunctionFailed(SpanfaasError):
    """The user's function failed; the platform did its job."""

    status, exit_code, slug, title = 500, 8, "function-failed", "Function failed"


class FunctionError(FunctionFailed):
    slug, title = "function-error", "Function raised an exception"


class FunctionTimeout(FunctionFailed):
    status, slug, title = 504, "function-timeout", "Function timed out"


class FunctionOutOfMemory(FunctionFailed):
    slug, title = "function-out-of-memory", "Function ran out of memory"


class FunctionCrashed(FunctionFailed):
    slug, title = "function-crashed", "Function crashed"


def _all_subclasses(cls: type[SpanfaasError]) -> list[type[SpanfaasError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


def _class_for_status(status: object) -> type[SpanfaasError]:
    """The most specific error of this module that answers ``status``."""
    if status in (413, 503):
        return PayloadTooLarge if status == 413 else InfraUnavailable
    for cls in (InvalidRequest, Unauthorized, Forbidden, NotFound, Conflict, TooManyRequests, InfraError):
        if cls.status == status:
            return cls
    if isinstance(status, int) and 400 <= status < 500:
        return InvalidRequest
    return SpanfaasError


def error_class(name: str) -> type[SpanfaasError] | None:
    """The error of this module named ``name`` (as a record's ``ErrorInfo.type`` names it), if any."""
    for cls in _all_subclasses(SpanfaasError):
        if cls.__name__ == name and cls.__module__ == __name__:  # not a subclass some other module defines
            return cls
    return None


def error_from_problem(doc: dict[str, Any]) -> SpanfaasError:
    """Rebuild the typed error from a Problem Details document (SDK side).

    A ``type`` this process has no class for (one defined in a package it
    never imported, e.g. ``trigger-not-found`` in the CLI) becomes the
    error of its ``status``, so it keeps its kind and its CLI exit code.
    """
    slug = str(doc.get("type", "")).removeprefix(PROBLEM_BASE)
    by_slug: dict[str, type[SpanfaasError]] = {}
    for c in _all_subclasses(SpanfaasError):  # parents first: a subclass that keeps its parent's slug
        by_slug.setdefault(c.slug, c)  # (a private marker, e.g. a deploy cut short) never takes its place
    cls = by_slug.get(slug) or _class_for_status(doc.get("status"))
    extra = {k: v for k, v in doc.items() if k not in ("type", "title", "status", "detail", "instance")}
    return cls(str(doc.get("detail", doc.get("title", "unknown error"))), **extra)
