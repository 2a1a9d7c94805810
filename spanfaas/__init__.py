"""spanfaas: a self-hostable serverless platform for Python that spans infrastructures.

Layers, each depending only on those below it::

    cli, client
    gateway, events
    scheduler
    infra
    runtime
    sandbox
    model, errors, config (config_problems), tomltext, store, clipping, ports   (usable from every layer)
"""

from spanfaas.errors import (
    Conflict,
    Forbidden,
    FunctionCrashed,
    FunctionError,
    FunctionFailed,
    FunctionNotFound,
    FunctionOutOfMemory,
    FunctionTimeout,
    InfraError,
    InfraInterrupted,
    InfraUnavailable,
    InvalidBundle,
    InvalidManifest,
    InvalidPayload,
    InvalidRequest,
    InvocationNotFound,
    NotFound,
    PayloadTooLarge,
    SpanfaasError,
    TooManyRequests,
    Unauthorized,
    WaitTimeout,
)
from spanfaas.model import (
    ErrorInfo,
    FunctionSpec,
    InfraInfo,
    InvokeContext,
    Resources,
    Result,
    Scaling,
)

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spanfaas.client import AsyncClient, Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ErrorInfo",
    "Forbidden",
    "FunctionCrashed",
    "FunctionError",
    "FunctionFailed",
    "FunctionNotFound",
    "FunctionOutOfMemory",
    "FunctionSpec",
    "FunctionTimeout",
    "InfraError",
    "InfraInfo",
    "InfraInterrupted",
    "InfraUnavailable",
    "InvalidBundle",
    "InvalidManifest",
    "InvalidPayload",
    "InvalidRequest",
    "InvocationNotFound",
    "InvokeContext",
    "NotFound",
    "PayloadTooLarge",
    "Resources",
    "Result",
    "Scaling",
    "SpanfaasError",
    "TooManyRequests",
    "Unauthorized",
    "WaitTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The SDK is imported on first use: it pulls in httpx (~75 ms, many
    # mappings), which function processes forked by the runtime never need.
    if name in ("Client", "AsyncClient"):
        from spanfaas import client

        return getattr(client, name)
    raise AttributeError(f"module 'spanfaas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
