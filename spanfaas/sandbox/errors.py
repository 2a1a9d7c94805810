"""The one error the sandbox raises on purpose.

Most sandbox calls degrade instead of raising: they return a
``Protection(active=False, reason=...)`` and the runtime warns.  A
``SandboxError`` is reserved for a step whose silent failure would leave a
process *less* isolated than its caller believes it is (a uid drop that did
not happen, a cgroup that cannot hold the process it was asked to hold).
"""

from __future__ import annotations

from spanfaas.errors import InfraError

__all__ = ["SandboxError"]


class SandboxError(InfraError):
    """A sandbox step that was explicitly requested could not be applied."""

    slug, title = "sandbox-error", "Sandbox could not be applied"
