"""The local runtime: templates, instances, pools (the embedded infrastructure).

Layering: ``runtime`` uses ``sandbox`` and the shared records; ``infra.local``
wraps it behind the Infrastructure protocol.  Child-side modules (zygote,
template, instance) are imported by the zygote; runtime-side modules
(runtime, pool and its parts: queueing, handle, diagnosis, exitwatch; channels)
run on the control plane's event loop.
"""

from typing import TYPE_CHECKING, Any

from spanfaas.runtime.context import Context

if TYPE_CHECKING:
    from spanfaas.runtime.runtime import LocalRuntime

__all__ = ["Context", "LocalRuntime"]


def __getattr__(name: str) -> Any:
    # The zygote imports this package: loading the asyncio side here would put
    # asyncio (and ssl) into every template's memory map.
    if name == "LocalRuntime":
        from spanfaas.runtime.runtime import LocalRuntime

        return LocalRuntime
    raise AttributeError(f"module 'spanfaas.runtime' has no attribute {name!r}")
