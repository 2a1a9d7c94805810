"""The local runtime: templates, instances, pools (the embedded infrastructure).

Layering: ``runtime`` uses ``sandbox`` and the shared records; ``infra.local``
wraps it behind the Infrastructure protocol.  Child-side modules (zygote,
template, instance) are imported by the zygote; runtime-side modules
(runtime, pool, channels) run on the control plane's event loop.
"""

from spanfaas.runtime.context import Context
from spanfaas.runtime.runtime import LocalRuntime

__all__ = ["Context", "LocalRuntime"]
