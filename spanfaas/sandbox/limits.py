"""Per-process limits (rlimits) and dropping root for a dedicated uid.

rlimits are the cheapest layer (a few µs) and the only one that works
everywhere, so they are always applied; they bound one process where the
cgroup bounds the whole function.
"""

from __future__ import annotations

import os
import resource
from typing import Final

from spanfaas.sandbox import _libc
from spanfaas.sandbox.errors import SandboxError
from spanfaas.sandbox.plan import SandboxPlan

__all__ = ["NOFILE_CAP", "drop_privileges", "set_rlimits"]

NOFILE_CAP: Final = 4096
"""Open files per process: room for a busy HTTP client, not for an fd bomb."""


def _cap(which: int, value: int, pid: int = 0) -> None:
    """Set soft = hard = ``value`` for ``pid`` (0: the caller), never above
    the current hard limit.

    Lowering the hard limit is irreversible for an unprivileged process,
    which is the point: user code cannot raise it back.
    """
    _, hard = resource.prlimit(pid, which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.prlimit(pid, which, (value, value))


def set_rlimits(plan: SandboxPlan, pid: int = 0) -> None:
    """Apply the plan's per-process limits to the caller, or to process ``pid``
    (a template, from its fitter: needs CAP_SYS_RESOURCE), inherited by
    its children.

    * RLIMIT_CORE = 0: a crashing function must not write its memory (and
      its secrets) to disk.
    * RLIMIT_DATA = ``instance_memory_bytes``: one runaway allocation fails
      with MemoryError inside the instance instead of OOM-killing the group.
      It counts private writable mappings inherited from the template too.
    * RLIMIT_NPROC = ``pids`` when ``uid`` is set: counted per real uid over
      the whole host and ignored for root, hence only with a dedicated uid.
    * RLIMIT_NOFILE ≤ NOFILE_CAP.
    """
    try:
        _cap(resource.RLIMIT_CORE, 0, pid)
        if plan.instance_memory_bytes:
            _cap(resource.RLIMIT_DATA, plan.instance_memory_bytes, pid)
        if plan.uid is not None and plan.pids:
            _cap(resource.RLIMIT_NPROC, plan.pids, pid)
        _cap(resource.RLIMIT_NOFILE, NOFILE_CAP, pid)
    except (OSError, ValueError) as e:
        raise SandboxError(f"setrlimit failed for {plan.name!r}: {e}") from e


def drop_privileges(uid: int) -> None:
    """Become ``uid``/``uid`` (gid = uid) for good, with no supplementary groups.

    Order matters: groups and gid first (they need root), uid last; real,
    effective and saved ids all change, so nothing can switch back, and
    NO_NEW_PRIVS stops setuid binaries from granting privileges again.
    The result is verified; a drop that did not take raises SandboxError.
    """
    if not 0 <= uid < 2**32 - 1:
        raise SandboxError(f"uid {uid} is out of range 0..4294967294")
    try:
        if os.getgroups():
            os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        _libc.no_new_privs()
    except OSError as e:
        raise SandboxError(
            f"cannot drop to uid {uid} (running as uid {os.getuid()}): {e.strerror}; "
            "it needs CAP_SETUID and CAP_SETGID (run the runtime as root), or omit uid"
        ) from e
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise SandboxError(f"uid drop did not take: resuid={os.getresuid()} resgid={os.getresgid()}")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise SandboxError(f"uid {uid} could regain root with setuid(0); refusing to continue")
