"""spanfaas: a self-hostable serverless platform for Python that spans infrastructures.

Layers, each depending only on those below it::

    cli, client
    gateway, events
    scheduler
    infra
    runtime
    sandbox
    model, errors, config, store   (usable from every layer)
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

__version__ = "0.1.0"

__all__ = [
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
    "__version__",
]
