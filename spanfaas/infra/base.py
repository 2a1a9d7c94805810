"""The protocol every FaaS infrastructure adapter implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from spanfaas.model import Bundle, FunctionSpec, InfraInfo, InvokeContext, Result


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

    async def prewarm(self, name: str) -> None:
        """Get an instance ready ahead of an expected invocation (may be a no-op)."""
        ...

    async def close(self) -> None: ...
