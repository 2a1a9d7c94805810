"""What this host lets the sandbox do, found by trying, not by guessing.

Kernel config, boot parameters, container runtimes, LSMs and missing root
all remove mechanisms in ways that version numbers do not reveal, so each
one is tried for real: namespaces, Landlock and seccomp in a forked child
that exits at once (the caller is never changed), cgroups by finding a
writable hierarchy.  The answer is cached for the life of the process:
call ``probe()`` early, in the unsandboxed runtime process; a process that
is already sandboxed would (truthfully) report less.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
from typing import Final

import msgspec

from spanfaas.model import Protection
from spanfaas.sandbox import _libc
from spanfaas.sandbox.cgroups import CONTROLLERS, hierarchies
from spanfaas.sandbox.landlock import READ_FILE, TEST_ABI_ENV, _RulesetAttr, abi_version, scratch_protection, unavailable_reason
from spanfaas.sandbox.namespaces import NAMESPACES, denied_reason
from spanfaas.sandbox.plan import SandboxPlan
from spanfaas.sandbox.seccomp import (
    SECCOMP_MODE_FILTER,
    SECCOMP_RET_ALLOW,
    _guard_program,
    _program,
    instance_guard,
    _SockFilter,
    _SockFprog,
    signal_protection,
)

__all__ = ["NAMES", "prepare", "probe", "report"]

NAMES: Final = (
    *NAMESPACES,
    *(f"cgroup-{c}" for c in CONTROLLERS),
    "rlimits",
    "uid",
    "landlock",
    "seccomp",
    "signal-scope",
    "scratch-isolation",
)
"""Every protection name, in report order."""

_PROBE_TIMEOUT_S: Final = 2.0
_FORKED: Final = (*NAMESPACES, "landlock", "seccomp")


def _ns_reason(err: int) -> str:
    if err == errno.EPERM:
        return denied_reason()
    if err == errno.EINVAL:
        return "kernel without this namespace type"
    if err == errno.ENOSPC:
        return "namespace limit reached (/proc/sys/user/max_*_namespaces)"
    return os.strerror(err)


def _child_tries() -> list[int]:
    """In the forked child: try each mechanism, return errnos (0 = worked)."""
    out: list[int] = []
    for flag in NAMESPACES.values():
        try:
            _libc.unshare(flag)
            out.append(0)
        except OSError as e:
            out.append(e.errno or errno.EIO)
    allow = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, SECCOMP_RET_ALLOW))
    prog = _SockFprog(1, allow)
    try:
        _libc.no_new_privs()
        ll = _RulesetAttr(READ_FILE, 0, 0)
        fd = _libc.syscall("landlock_create_ruleset", ctypes.c_void_p(ctypes.addressof(ll)), 8, 0)
        _libc.syscall("landlock_restrict_self", fd, 0)
        landlock = 0
    except OSError as e:
        landlock = e.errno or errno.EIO
    try:
        _libc.prctl(_libc.PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
        seccomp = 0
    except OSError as e:
        seccomp = e.errno or errno.EIO
    return [*out, landlock, seccomp]


def _forked_probe() -> dict[str, int] | str:
    """Run ``_child_tries`` in a child; errno per mechanism, or why it failed."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"probe could not fork: {e.strerror}"
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, bytes(min(e, 255) for e in _child_tries()))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    try:
        ready, _, _ = select.select([r], [], [], _PROBE_TIMEOUT_S)
        data = os.read(r, 64) if ready else b""
    finally:
        os.close(r)
        if not data:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    if len(data) != len(_FORKED):
        return "probe child failed to report"
    return dict(zip(_FORKED, data))


def _cgroup(ctrl: str) -> Protection:
    name = f"cgroup-{ctrl}"
    h = hierarchies().get(ctrl)
    if h is None:
        return Protection(name, False, f"no {ctrl} controller in any cgroup v1 or v2 hierarchy")
    where = f"cgroup v{h.version} at {h.mount}"
    if not os.access(h.mount, os.W_OK):
        return Protection(name, False, f"{where} is not writable (not root, or not delegated)")
    return Protection(name, True, where)


def probe() -> list[Protection]:
    """One Protection per mechanism, in ``NAMES`` order, with reasons.

    Returns a cached list: treat it as read-only.  (Cached per value of
    ``landlock.TEST_ABI_ENV``: a test that lowers the ABI sees its answer.)
    """
    return _probe(os.environ.get(TEST_ABI_ENV, ""))


@functools.cache
def _probe(_forced_abi: str) -> list[Protection]:
    forked = _forked_probe()
    out: dict[str, Protection] = {}
    for name in NAMESPACES:
        if isinstance(forked, str):
            out[name] = Protection(name, False, forked)
        elif forked[name]:
            out[name] = Protection(name, False, _ns_reason(forked[name]))
        else:
            out[name] = Protection(name, True, "can unshare")
    for ctrl in CONTROLLERS:
        out[f"cgroup-{ctrl}"] = _cgroup(ctrl)
    can_switch_uid = _libc.has_caps(_libc.CAP_SETUID, _libc.CAP_SETGID)
    # RLIMIT_NPROC counts per real uid: set only for a dedicated uid (limits.py).
    out["rlimits"] = Protection("rlimits", True, "core 0, data, nofile" + (", nproc" if can_switch_uid else ""))
    if can_switch_uid:
        out["uid"] = Protection("uid", True, "CAP_SETUID and CAP_SETGID: can switch to a dedicated uid")
    else:
        out["uid"] = Protection("uid", False, f"uid {os.geteuid()} without CAP_SETUID/CAP_SETGID: cannot switch uid")
    abi = abi_version()
    if abi == 0:
        out["landlock"] = Protection("landlock", False, unavailable_reason())
    elif isinstance(forked, str) or forked["landlock"]:
        why = forked if isinstance(forked, str) else os.strerror(forked["landlock"])
        out["landlock"] = Protection("landlock", False, f"Landlock ABI {abi}, but a layer was refused: {why}")
    else:
        scoped = ", signal and abstract-socket scoping" if abi >= 6 else ""
        out["landlock"] = Protection("landlock", True, f"Landlock ABI {abi}{scoped}")
    if _libc.ARCH not in ("x86_64", "aarch64"):
        out["seccomp"] = Protection("seccomp", False, f"no syscall table for architecture {_libc.ARCH}")
    elif isinstance(forked, str):
        out["seccomp"] = Protection("seccomp", False, forked)
    elif forked["seccomp"]:
        out["seccomp"] = Protection("seccomp", False, f"seccomp filter refused: {os.strerror(forked['seccomp'])}")
    else:
        out["seccomp"] = Protection("seccomp", True, f"BPF filters ({_libc.ARCH})")
    # (Templates add the seccomp signal guard wherever Landlock cannot scope signals.)
    out["signal-scope"] = signal_protection(abi, out["landlock"].active, out["seccomp"].active, guarded=True)
    # (Strict templates sweep their scratch tmpfs wherever Landlock cannot keep an instance in its dir.)
    out["scratch-isolation"] = scratch_protection(out["landlock"].active)
    return [out[n] for n in NAMES]


def report() -> list[Protection]:
    """What the host allows, for ``spanfaas doctor`` and the runtime's info record."""
    return probe()


def prepare() -> list[Protection]:
    """Probe, and build what can be built once, before forking templates.

    Call it in the process templates fork from (the zygote): the probe
    result, the cgroup mount table and both seccomp programs are then
    inherited, so a template pays only for its syscalls (the seccomp step
    drops from ~0.5 ms to ~0.2 ms in a fresh fork).  Returns ``probe()``.
    """
    result = probe()
    hierarchies()
    # msgspec builds its decoding plan for a type on first use; build it here,
    # once, rather than in (and un-shared by) every template (~600 KiB each).
    plan = msgspec.convert({"name": "warm", "uid": 1, "cpu": 1.0, "ro_paths": ["/"], "rw_paths": ["/tmp"]}, SandboxPlan)
    msgspec.structs.replace(plan, uid=None)
    if _libc.ARCH in ("x86_64", "aarch64"):
        # Where Landlock cannot scope signals a template in a pid namespace guards pid 1 (its
        # deny-list), then, imported, itself: pid 2 (with threads, its own program).
        guards = [()] if abi_version() >= 6 else [(), (1,)]
        for allow_exec in (False, True):
            for unix_sockets in (False, True):
                for guarded in guards:
                    _program(_libc.ARCH, allow_exec, unix_sockets, guarded)
        if abi_version() < 6:
            _guard_program(_libc.ARCH, (2,))
            instance_guard(_libc.ARCH)  # each instance's own, its pid patched in after its fork
    return result
