"""What to apply to one function: the sandbox plan.

The runtime turns a validated ``FunctionSpec`` into a ``SandboxPlan`` and
hands it to the sandbox calls; the sandbox never reads manifests itself, so
this record is the whole contract between the two layers.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

__all__ = ["SandboxPlan"]

# A hostname label and a cgroup directory name at once: no "/", no dots, no
# leading "-", at most 63 bytes (sethostname allows 64, cgroupfs any).
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,62}$")


class SandboxPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The isolation one function's template and instances get.

    Zero means "no limit" for every numeric field, so a plan built from
    defaults only adds namespaces and the deny-list, never a limit that
    could break a function.
    """

    name: str
    """Function name: the cgroup directory name and the hostname."""
    uid: int | None = None
    """Drop to this uid and gid (same number); None keeps the caller's."""
    memory_bytes: int = 0
    """cgroup memory limit for the whole function (template + instances)."""
    instance_memory_bytes: int = 0
    """RLIMIT_DATA of each process: a runaway allocation fails with MemoryError."""
    cpu: float = 0.0
    """cgroup CPU quota in cores."""
    pids: int = 0
    """cgroup pids.max; also RLIMIT_NPROC when ``uid`` is set."""
    network: Literal["none", "host"] = "none"
    """"none": a fresh network namespace with loopback only."""
    allow_exec: bool = False
    """Whether execve/execveat stay allowed (subprocesses)."""
    ro_paths: tuple[str, ...] = ()
    """Landlock: readable and executable trees (code, packages, stdlib)."""
    rw_paths: tuple[str, ...] = ()
    """Landlock: read-write trees (scratch), including create and remove."""
    namespaces: bool = True
    """Whether to unshare pid/mount/ipc/uts(/net) namespaces."""

    def __post_init__(self) -> None:
        # ValueError is msgspec's protocol: decoding turns it into a ValidationError.
        if not _NAME.match(self.name):
            raise ValueError(f"sandbox name {self.name!r} must be 1-63 of [A-Za-z0-9_-], not starting with '-'")
        if self.uid is not None and not 0 <= self.uid < 2**32 - 1:
            raise ValueError(f"uid {self.uid} is out of range 0..4294967294")
        for field, value in (
            ("memory_bytes", self.memory_bytes),
            ("instance_memory_bytes", self.instance_memory_bytes),
            ("cpu", self.cpu),
            ("pids", self.pids),
        ):
            if value < 0:
                raise ValueError(f"{field} must be >= 0 (0 = no limit), got {value}")
