"""The protocol every FaaS infrastructure adapter implements."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from spanfaas.model import Bundle, EarlyStats, FunctionSpec, InfraInfo, InvokeContext, Result

PREWARM_TRIGGER: ContextVar[str] = ContextVar("spanfaas_prewarm_trigger", default="api")
"""Why ``prewarm`` is being called (``headers``, ``dns``, ``api``): set by the caller
around the call, read by adapters that count prewarms by trigger."""


@runtime_checkable
class Infrastructure(Protocol):
    """A place that can run functions: the local runtime, Ray, a remote site.

    ``invoke`` returns a ``Result`` whenever the invocation reached the
    function, also when the function failed (``Result.error``).  It raises
    ``InfraError`` only when the platform failed, so a scheduler may fail
    over on exceptions and never on the function's own errors.
    """

    name: str

    async def info(self) -> InfraInfo: ...

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None: ...

    async def invoke(self, spec: FunctionSpec, payload: bytes, ctx: InvokeContext) -> Result: ...

    async def remove(self, name: str) -> None: ...

    async def prewarm(self, name: str) -> bool:
        """Get an instance ready ahead of an expected invocation (may be a no-op).

        Returns promptly: it starts the work and does not wait for it (the
        gateway calls it on an invoke request's headers, before the body).
        True when this call started something held for the invocation: only
        then may the caller ``release`` it (see :class:`Releasing`)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Releasing(Protocol):
    """Optional: an infrastructure that holds what ``prewarm`` prepared until a call comes."""

    def release(self, name: str) -> bool:
        """The request a prewarm was for failed before it ran: stop holding what was prepared."""
        ...


@runtime_checkable
class AnswersLate(Protocol):
    """Optional: an infrastructure that is waited for past the function's timeout (a remote
    site, Ray: the answer crosses a network).  ``answer_slack`` is how much longer: a call
    with ``t`` seconds of timeout is given up as ``InfraUnavailable`` after ``t + answer_slack``.
    The spanning scheduler fits each attempt of a call, and its wait, in the call's deadline."""

    @property
    def answer_slack(self) -> float: ...


@runtime_checkable
class ReportsEarlyStats(Protocol):
    """Optional: an infrastructure that counts its prewarms and scale events (the local runtime)."""

    def early_stats(self) -> dict[str, EarlyStats]: ...


@runtime_checkable
class InfoInMemory(Protocol):
    """Optional: an infrastructure whose ``info`` is read from this process's memory (the
    local runtime): its figures (functions, instances, free slots, queue) are read at each
    ``/v1/info`` and ``/metrics``, not served as the last background refresh left them."""

    def info_now(self) -> InfraInfo:
        """What ``info`` answers, without waiting for anything."""
        ...
