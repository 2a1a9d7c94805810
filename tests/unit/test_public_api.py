"""spanfaas.__all__ is the curated public API, and each name in it imports."""

import subprocess
import sys

import spanfaas

PUBLIC_API = [
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


def test_all_is_the_curated_list() -> None:
    assert sorted(spanfaas.__all__) == sorted(PUBLIC_API)
    assert len(set(spanfaas.__all__)) == len(spanfaas.__all__)


def test_every_public_name_imports() -> None:
    for name in PUBLIC_API:
        assert getattr(spanfaas, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from spanfaas import *", namespace)
    assert set(PUBLIC_API) - {"__version__"} <= set(namespace)


def test_public_classes_say_where_they_live() -> None:
    from spanfaas.client import AsyncClient, Client

    assert spanfaas.Client is Client and spanfaas.AsyncClient is AsyncClient
    assert issubclass(spanfaas.FunctionError, spanfaas.FunctionFailed)
    assert issubclass(spanfaas.FunctionFailed, spanfaas.SpanfaasError)


def test_importing_spanfaas_does_not_load_the_sdk() -> None:
    # Function processes import spanfaas; httpx must stay out of them until the SDK is used.
    code = "import sys, spanfaas; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError):
        spanfaas.NoSuchThing  # noqa: B018
