"""seccomp: a deny-list of syscalls no function needs, assembled as classic BPF.

A deny-list (not an allow-list) because functions run arbitrary Python and
C extensions: denying the few calls that widen the kernel attack surface or
escape the sandbox (ptrace, mount, namespaces, bpf, io_uring, keyrings,
modules, kexec...) costs no compatibility.  Denied calls fail with EPERM,
which libraries handle, rather than killing the process.

The filter, in order:

1. ``arch`` is not the native one (i386 ``int 0x80`` on x86_64, arm32 on
   aarch64) → kill the process: syscall numbers differ per ABI, so a
   foreign-ABI call would slip past the list.
2. x86_64 x32 calls (nr with bit 30 set) → kill, for the same reason.
3. listed syscall → EPERM.
4. ``clone3`` → ENOSYS: its flags live in memory BPF cannot read, and
   glibc falls back to ``clone`` on ENOSYS (threads, posix_spawn).
5. ``clone`` with any CLONE_NEW* flag → EPERM (fork and threads pass).
6. ``personality`` with any execution domain but Linux's own (or the
   query 0xffffffff) → EPERM: ``ADDR_NO_RANDOMIZE`` turns ASLR off for
   what the process execs, the others reach rarely-used kernel code.
   The values Docker's default profile allows.
7. ``ioctl(fd, TIOCSTI)`` → EPERM: pushing input into a terminal is the
   classic way out of a sandbox that shares a tty.
8. without ``unix_sockets``: ``socket(AF_UNIX, ...)`` → EPERM.  A network
   namespace holds abstract sockets but not path ones, and Landlock before
   ABI 9 does not govern ``connect``: a function without network reached
   every host service on a unix socket its uid may write to (PostgreSQL's
   and Redis's often are).  ``socketpair`` stays allowed (asyncio,
   multiprocessing pipes) for stream and seqpacket pairs, which cannot
   connect elsewhere; a datagram pair (``SOCK_DGRAM``, or ``SOCK_RAW``,
   which AF_UNIX makes a datagram one) → EPERM: such a socket sends to any
   path socket it names (``sendto``, or ``connect`` again), syslog's or
   journald's.  ``socket(AF_VSOCK, ...)`` → EPERM too: vsock addresses are
   not a network namespace's (a VM has one CID, its host is CID 2), so in a
   virtual machine such a socket reached the hypervisor's services, and
   other VMs', from a function without network.  And
   ``socket(AF_NETLINK, ..., NETLINK_KOBJECT_UEVENT)`` → EPERM: the kernel
   sends its uevents (devices added, removed, changed) to every network
   namespace the host's user namespace owns, so the function heard the
   host's.  NETLINK_ROUTE and the others answer about the function's own
   network namespace, or need capabilities it has not: they stay allowed.
9. ``prlimit64`` setting another process's limits (pid not 0, a new limit
   given) → EPERM: an instance runs as its template's uid, which is all the
   kernel asks (Landlock does not govern it), so a strict call set its
   template's limits -- inherited by every instance forked after it
   (``RLIMIT_FSIZE`` 0: no later call could write a file) -- or a prefork
   instance's, its next call's.  ``setrlimit`` (glibc: ``prlimit64(0, ...)``)
   and reading anyone's limits stay allowed, but not a call that names
   the caller by its own pid instead of 0.
10. scheduling another process: ``sched_setaffinity``, ``sched_setparam``,
    ``sched_setscheduler``, ``sched_setattr`` with a pid not 0,
    ``setpriority``/``ioprio_set`` with a who not 0 or of a whole uid →
    EPERM, for the same reason: a strict call set its template's nice value
    19 and pinned it to one CPU, and every later call ran so.
11. with ``guarded`` pids (a kernel whose Landlock cannot scope signals,
    ABI < 6: see ``signal_guard``): ``kill``, ``tkill``, ``tgkill``,
    ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``, ``pidfd_open`` and
    ``fcntl(F_SETOWN)`` naming a guarded pid, its group (``-pid``) or every
    process (``-1``) → EPERM; ``pidfd_send_signal``, ``fcntl(F_SETOWN_EX)``
    and ``ioctl(FIOSETOWN, SIOCSPGRP)`` → EPERM (their target is behind a
    descriptor or a pointer, which BPF cannot read).
12. everything else → allow.

And, in a filter of its own that each instance adds right after its fork
(``InstanceGuard``, again only where Landlock cannot scope signals), the
instance's signal guard: ``kill``, ``tkill``, ``rt_sigqueueinfo`` and
``fcntl(F_SETOWN)`` naming anything but the instance itself (its pid), its
process group (``-pid``, ``0``) → EPERM; ``tgkill`` and
``rt_tgsigqueueinfo`` of another thread group than its own → EPERM.  Its
sibling instances share its uid, and the template forks them after it as
well as before: no filter the template could install tells them apart, but
one naming the instance's own pid does.  A static filter cannot tell the
instance's children from its siblings either (both are pids the kernel
hands out after its own), so its children are refused by pid too: they are
reached through its process group, which they are in unless they leave it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import struct
from typing import Final, NamedTuple

from spanfaas.model import Protection
from spanfaas.sandbox import _libc

__all__ = ["DENIED", "SIGNALLING", "InstanceGuard", "instance_guard", "seccomp_deny", "signal_guard"]

SECCOMP_MODE_FILTER: Final = 2
SECCOMP_RET_KILL_PROCESS: Final = 0x80000000
SECCOMP_RET_ERRNO: Final = 0x00050000
SECCOMP_RET_ALLOW: Final = 0x7FFF0000
EPERM: Final = 1
ENOSYS: Final = 38
TIOCSTI: Final = 0x5412
AF_UNIX: Final = 1
AF_VSOCK: Final = 40
AF_NETLINK: Final = 16
NETLINK_KOBJECT_UEVENT: Final = 15
SOCK_DGRAM: Final = 2
SOCK_RAW: Final = 3
SOCK_TYPE_MASK: Final = 0xF
"""Of ``socket``'s and ``socketpair``'s type argument, the type (the rest: SOCK_NONBLOCK, SOCK_CLOEXEC)."""
X32_SYSCALL_BIT: Final = 0x40000000
CLONE_NEW_ANY: Final = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME
F_SETOWN: Final = 8
F_SETOWN_EX: Final = 15
FIOSETOWN: Final = 0x8901
SIOCSPGRP: Final = 0x8902

# classic BPF opcodes
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_JSET_K: Final = 0x45
_RET_K: Final = 0x06
_ALU_AND_K: Final = 0x54

# struct seccomp_data offsets (little-endian: low word of a 64-bit arg first)
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_OFF_ARG0: Final = 16
_OFF_ARG1: Final = 24
_OFF_ARG2: Final = 32

DENIED: Final = (
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns", "bpf", "keyctl", "add_key", "request_key", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "open_by_handle_at", "userfaultfd", "modify_ldt",
)  # fmt: skip
"""Always denied (where the architecture has them: modify_ldt is x86's). The new
mount API (open_tree, fsopen...) is listed with mount."""
PERSONALITIES: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, PER_LINUX32, with UNAME26, and the query: what ``personality`` may set."""
EXEC: Final = ("execve", "execveat")
SCHED_OWN_PID: Final = ("sched_setaffinity", "sched_setparam", "sched_setscheduler", "sched_setattr")
"""Allowed only on the caller (pid 0), as ``prlimit64`` setting a limit."""
PRIO_USER: Final = 2
IOPRIO_WHO_USER: Final = 3
SIGNALLING: Final = ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")
"""The calls that name the process (or group, or -1: all) they signal, or a pidfd's, in their first argument."""


class _Arch(NamedTuple):
    audit: int
    x32: bool
    nr: dict[str, int]


_ARCHES: Final[dict[str, _Arch]] = {
    "x86_64": _Arch(0xC000003E, True, {
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "mount": 165, "umount2": 166,
        "pivot_root": 155, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "unshare": 272, "setns": 308, "bpf": 321, "keyctl": 250,
        "add_key": 248, "request_key": 249, "perf_event_open": 298, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168,
        "open_by_handle_at": 304, "userfaultfd": 323, "modify_ldt": 154, "execve": 59, "execveat": 322,
        "clone": 56, "clone3": 435, "ioctl": 16, "socket": 41, "socketpair": 53,
        "personality": 135, "prlimit64": 302, "setpriority": 141, "ioprio_set": 251, "sched_setparam": 142,
        "sched_setscheduler": 144, "sched_setaffinity": 203, "sched_setattr": 314,
        "personality": 135, "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297, "pidfd_open": 434, "pidfd_send_signal": 424, "fcntl": 72,
    }),
    "aarch64": _Arch(0xC00000B7, False, {
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "mount": 40, "umount2": 39,
        "pivot_root": 41, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442, "unshare": 97, "setns": 268, "bpf": 280, "keyctl": 219,
        "add_key": 217, "request_key": 218, "perf_event_open": 241, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225,
        "open_by_handle_at": 265, "userfaultfd": 282, "execve": 221, "execveat": 281,
        "clone": 220, "clone3": 435, "ioctl": 29, "socket": 198, "socketpair": 199,
        "personality": 92, "prlimit64": 261, "setpriority": 140, "ioprio_set": 30, "sched_setparam": 118,
        "sched_setscheduler": 119, "sched_setaffinity": 122, "sched_setattr": 274,
        "personality": 92, "kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240, "pidfd_open": 434, "pidfd_send_signal": 424, "fcntl": 25,
    }),
}  # fmt: skip


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


# One instruction: (opcode, jump-if-true label, jump-if-false label, k).
# A label is a name defined by _label(); None means "next instruction".
_Insn = tuple[int, str | None, str | None, int]


def _assemble(program: list[_Insn | str]) -> list[tuple[int, int, int, int]]:
    """Resolve symbolic jump labels into classic BPF relative offsets."""
    labels: dict[str, int] = {}
    insns: list[_Insn] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)
    out: list[tuple[int, int, int, int]] = []
    for i, (code, jt, jf, k) in enumerate(insns):
        offsets = [0 if t is None else labels[t] - i - 1 for t in (jt, jf)]
        if not all(0 <= o <= 255 for o in offsets):
            raise ValueError(f"seccomp program: jump out of range at {i}")
        out.append((code, offsets[0], offsets[1], k))
    return out


def _guarded_words(guarded: tuple[int, ...]) -> list[int]:
    """The 32-bit words a signalling call's target may not be: each guarded pid, its
    group (``-pid``) and ``-1`` (every process the caller may signal).  The kernel
    reads a pid_t argument as an int, so its low word is all there is to compare."""
    words = [-1, *(x for pid in guarded for x in (pid, -pid))]
    return sorted({w & 0xFFFFFFFF for w in words})


def _guard_dispatch(a: _Arch) -> list[_Insn | str]:
    """With the syscall number loaded: jump to the signal checks (``_guard_checks``)."""
    return [
        *[(_JEQ_K, "signal", None, a.nr[name]) for name in SIGNALLING],
        (_JEQ_K, "eperm", None, a.nr["pidfd_send_signal"]),
        (_JEQ_K, "fcntl", None, a.nr["fcntl"]),
    ]


def _guard_checks(guarded: tuple[int, ...]) -> list[_Insn | str]:
    words = _guarded_words(guarded)
    return [
        "signal",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        *[(_JEQ_K, "eperm", None, w) for w in words],
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "fcntl",
        (_LD_W_ABS, None, None, _OFF_ARG1),
        (_JEQ_K, "eperm", None, F_SETOWN_EX),
        (_JEQ_K, None, "allow", F_SETOWN),
        (_LD_W_ABS, None, None, _OFF_ARG2),
        *[(_JEQ_K, "eperm", None, w) for w in words],
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
    ]


def build_filter(
    arch: str, allow_exec: bool, unix_sockets: bool = True, guarded: tuple[int, ...] = ()
) -> list[tuple[int, int, int, int]]:
    """The deny-list program for ``arch`` as (code, jt, jf, k) tuples; with
    ``guarded`` pids, the signal guard too (step 11)."""
    a = _ARCHES[arch]
    denied = DENIED if allow_exec else DENIED + EXEC
    prog: list[_Insn | str] = [
        (_LD_W_ABS, None, None, _OFF_ARCH),
        (_JEQ_K, None, "kill", a.audit),
        (_LD_W_ABS, None, None, _OFF_NR),
    ]
    if a.x32:
        prog.append((_JGE_K, "kill", None, X32_SYSCALL_BIT))
    prog += [(_JEQ_K, "eperm", None, a.nr[name]) for name in denied if name in a.nr]
    prog += [
        (_JEQ_K, "enosys", None, a.nr["clone3"]),
        (_JEQ_K, "clone", None, a.nr["clone"]),
        (_JEQ_K, "ioctl", None, a.nr["ioctl"]),
        (_JEQ_K, "personality", None, a.nr["personality"]),
        (_JEQ_K, "prlimit", None, a.nr["prlimit64"]),
        *[(_JEQ_K, "own_pid", None, a.nr[name]) for name in SCHED_OWN_PID],
        (_JEQ_K, "setpriority", None, a.nr["setpriority"]),
        (_JEQ_K, "ioprio_set", None, a.nr["ioprio_set"]),
    ]
    if not unix_sockets:
        prog += [(_JEQ_K, "socket", None, a.nr["socket"]), (_JEQ_K, "socketpair", None, a.nr["socketpair"])]
    if guarded:
        prog += _guard_dispatch(a)
    prog += [
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "clone",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JSET_K, "eperm", None, CLONE_NEW_ANY),
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "ioctl",
        (_LD_W_ABS, None, None, _OFF_ARG1),
        (_JEQ_K, "eperm", None, TIOCSTI),
        *([(_JEQ_K, "eperm", None, FIOSETOWN), (_JEQ_K, "eperm", None, SIOCSPGRP)] if guarded else []),
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "socket",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JEQ_K, "eperm", None, AF_UNIX),
        (_JEQ_K, "eperm", None, AF_VSOCK),
        (_JEQ_K, None, "allow", AF_NETLINK),
        (_LD_W_ABS, None, None, _OFF_ARG2),  # protocol
        (_JEQ_K, "eperm", "allow", NETLINK_KOBJECT_UEVENT),
        "socketpair",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JEQ_K, None, "allow", AF_UNIX),
        (_LD_W_ABS, None, None, _OFF_ARG1),
        (_ALU_AND_K, None, None, SOCK_TYPE_MASK),
        (_JEQ_K, "eperm", None, SOCK_DGRAM),
        (_JEQ_K, "eperm", None, SOCK_RAW),
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "prlimit",
        (_LD_W_ABS, None, None, _OFF_ARG0),  # pid (an int: the low word is all of it)
        (_JEQ_K, "allow", None, 0),
        (_LD_W_ABS, None, None, _OFF_ARG2),  # new limit: a pointer, both words NULL
        (_JEQ_K, None, "eperm", 0),
        (_LD_W_ABS, None, None, _OFF_ARG2 + 4),
        (_JEQ_K, "allow", "eperm", 0),
        "own_pid",
        (_LD_W_ABS, None, None, _OFF_ARG0),  # pid: 0, the caller
        (_JEQ_K, "allow", "eperm", 0),
        "setpriority",
        (_LD_W_ABS, None, None, _OFF_ARG0),  # which
        (_JEQ_K, "eperm", None, PRIO_USER),
        (_LD_W_ABS, None, None, _OFF_ARG1),  # who: 0, the caller (or its own group)
        (_JEQ_K, "allow", "eperm", 0),
        "ioprio_set",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JEQ_K, "eperm", None, IOPRIO_WHO_USER),
        (_LD_W_ABS, None, None, _OFF_ARG1),
        (_JEQ_K, "allow", "eperm", 0),
        "personality",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        *[(_JEQ_K, "allow", None, k) for k in PERSONALITIES],
        *([(_RET_K, None, None, SECCOMP_RET_ERRNO | EPERM), *_guard_checks(guarded)] if guarded else []),
        "eperm",
        (_RET_K, None, None, SECCOMP_RET_ERRNO | EPERM),
        "allow",
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "enosys",
        (_RET_K, None, None, SECCOMP_RET_ERRNO | ENOSYS),
        "kill",
        (_RET_K, None, None, SECCOMP_RET_KILL_PROCESS),
    ]
    return _assemble(prog)


def build_guard(arch: str, guarded: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The signal guard alone (step 11), for pids learnt after the deny-list was installed."""
    a = _ARCHES[arch]
    prog: list[_Insn | str] = [
        (_LD_W_ABS, None, None, _OFF_ARCH),
        (_JEQ_K, None, "allow", a.audit),  # (the deny-list kills foreign ABIs)
        (_LD_W_ABS, None, None, _OFF_NR),
        *_guard_dispatch(a),
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        *_guard_checks(guarded),
        "eperm",
        (_RET_K, None, None, SECCOMP_RET_ERRNO | EPERM),
        "allow",
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
    ]
    return _assemble(prog)


@functools.cache
def _program(
    arch: str, allow_exec: bool, unix_sockets: bool = True, guarded: tuple[int, ...] = ()
) -> tuple[_SockFprog, ctypes.Array[_SockFilter]]:
    """The filter as the kernel takes it; cached, and the array kept alive with it."""
    insns = build_filter(arch, allow_exec, unix_sockets, guarded)
    table = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
    return _SockFprog(len(insns), table), table


def seccomp_deny(allow_exec: bool, unix_sockets: bool = True, guarded: tuple[int, ...] = ()) -> Protection:
    """Install the deny-list on the calling thread and its future children.
    ``unix_sockets``: whether ``socket(AF_UNIX)`` (and ``AF_VSOCK``, and uevent netlink) stays
    allowed (a function with the host's network; see the module's docstring, step 8).
    ``guarded``: pids no process under the filter may signal (step 11), where
    Landlock cannot scope signals; the signal guard's own Protection is
    ``signal_protection``'s.

    Filters stack and cannot be removed, so calling it again (e.g. per
    instance) only adds work per syscall; once per template is enough.
    Sets NO_NEW_PRIVS, which the kernel requires for an unprivileged filter.
    Returns an inactive Protection, without raising, on an unknown
    architecture or a kernel without seccomp filters.
    """
    if _libc.ARCH not in _ARCHES:
        return Protection("seccomp", False, f"no syscall table for architecture {_libc.ARCH}")
    prog, _ = _program(_libc.ARCH, allow_exec, unix_sockets, guarded)
    try:
        _libc.no_new_privs()
        _libc.prctl(_libc.PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
    except OSError as e:
        return Protection("seccomp", False, f"seccomp filter refused: {e.strerror}")
    n = sum(name in _ARCHES[_libc.ARCH].nr for name in DENIED) + (0 if allow_exec else len(EXEC))
    exec_note = "exec allowed" if allow_exec else "exec denied"
    unix_note = "" if unix_sockets else ", unix, vsock and uevent netlink sockets denied (no network; stream socketpairs allowed)"
    return Protection(
        "seccomp", True, f"{n} syscalls denied (EPERM), {exec_note}{unix_note}, namespace clones denied, "
        "other processes' rlimits and scheduling read-only, foreign ABIs killed"
    )


def signal_guard(guarded: tuple[int, ...]) -> bool:
    """Add a filter of the signal guard alone (step 11) for ``guarded``: pids
    the caller's future children may not signal but the caller itself had to
    (a template: its own pid and its threads', once its function is imported).
    False when the kernel refused it."""
    if _libc.ARCH not in _ARCHES or not guarded:
        return False
    prog, _ = _guard_program(_libc.ARCH, guarded)
    try:
        _libc.no_new_privs()
        _libc.prctl(_libc.PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
    except OSError:
        return False
    return True


@functools.cache
def _guard_program(arch: str, guarded: tuple[int, ...]) -> tuple[_SockFprog, ctypes.Array[_SockFilter]]:
    insns = build_guard(arch, guarded)
    table = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
    return _SockFprog(len(insns), table), table


_OWN: Final = 0x7FFFFFF0
"""Placeholders of ``build_instance_guard``'s program, patched by each instance: its pid,"""
_OWN_GROUP: Final = 0x8000000F
"""and its process group as ``kill`` names it (``-pid``, as a 32-bit word)."""


def build_instance_guard(arch: str) -> list[tuple[int, int, int, int]]:
    """The instance's own signal guard (see the module's docstring), with ``_OWN`` and
    ``_OWN_GROUP`` where its pid and group go (``InstanceGuard.install``)."""
    a = _ARCHES[arch]
    prog: list[_Insn | str] = [
        (_LD_W_ABS, None, None, _OFF_ARCH),
        (_JEQ_K, None, "allow", a.audit),  # (the deny-list kills foreign ABIs)
        (_LD_W_ABS, None, None, _OFF_NR),
        (_JEQ_K, "by_pid", None, a.nr["kill"]),
        (_JEQ_K, "by_pid", None, a.nr["tkill"]),
        (_JEQ_K, "by_pid", None, a.nr["rt_sigqueueinfo"]),
        (_JEQ_K, "by_tgid", None, a.nr["tgkill"]),
        (_JEQ_K, "by_tgid", None, a.nr["rt_tgsigqueueinfo"]),
        (_JEQ_K, "fcntl", None, a.nr["fcntl"]),
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
        "fcntl",
        (_LD_W_ABS, None, None, _OFF_ARG1),
        (_JEQ_K, None, "allow", F_SETOWN),
        (_LD_W_ABS, None, None, _OFF_ARG2),  # the owner: 0 (none), us, or our group
        (_JEQ_K, "allow", "own", 0),
        "by_pid",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JEQ_K, "allow", None, 0),  # kill(0, ...): our group
        "own",
        (_JEQ_K, "allow", None, _OWN),
        (_JEQ_K, "allow", "eperm", _OWN_GROUP),
        "by_tgid",
        (_LD_W_ABS, None, None, _OFF_ARG0),
        (_JEQ_K, "allow", "eperm", _OWN),
        "eperm",
        (_RET_K, None, None, SECCOMP_RET_ERRNO | EPERM),
        "allow",
        (_RET_K, None, None, SECCOMP_RET_ALLOW),
    ]
    return _assemble(prog)


class InstanceGuard:
    """The instance's signal guard, built once (in the zygote: ``instance_guard``) and
    added by each instance right after its fork with its own pid patched in: two
    words written and one ``prctl``, bound here so that the fresh child runs as
    little Python as it can (each page it touches is a copy-on-write fault)."""

    def __init__(self, arch: str) -> None:
        insns = build_instance_guard(arch)
        self._table = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
        self._prog = _SockFprog(len(insns), self._table)
        size = ctypes.sizeof(_SockFilter)
        k = _SockFilter.k.offset
        self._own = tuple(i * size + k for i, ins in enumerate(insns) if ins[3] == _OWN)
        self._group = tuple(i * size + k for i, ins in enumerate(insns) if ins[3] == _OWN_GROUP)
        self._words = memoryview(self._table).cast("B")
        self._pack = struct.Struct("=I").pack_into
        self._args = (ctypes.c_int(_libc.PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                      ctypes.c_ulong(ctypes.addressof(self._prog)), ctypes.c_ulong(0), ctypes.c_ulong(0))  # fmt: skip
        self._prctl = _libc._prctl

    def install(self, pid: int) -> None:
        """Add the guard for ``pid`` (the caller's own) to the caller; raises OSError.
        The caller holds NO_NEW_PRIVS (inherited from its template's deny-list)."""
        pack, words = self._pack, self._words
        for at in self._own:
            pack(words, at, pid)
        for at in self._group:
            pack(words, at, -pid & 0xFFFFFFFF)
        if self._prctl(*self._args) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"the instance's seccomp signal guard was refused: {os.strerror(err)}")


@functools.cache
def instance_guard(arch: str) -> InstanceGuard:
    """The prepared ``InstanceGuard`` for ``arch`` (cached: built in the zygote, shared by its templates)."""
    return InstanceGuard(arch)


def signal_protection(landlock_abi: int, landlock: bool, seccomp: bool, guarded: bool, siblings: bool = True) -> Protection:
    """What keeps an instance from signalling its template, its reaper, its siblings
    and the host: Landlock's signal scope (ABI 6+), else the seccomp signal guard.
    ``siblings``: each instance adds its own guard (``InstanceGuard``), which a function
    allowed subprocesses goes without: it must stop its children by their pid."""
    name = "signal-scope"
    if landlock and landlock_abi >= 6:
        return Protection(name, True, f"Landlock ABI {landlock_abi} scopes signals: an instance signals only its own "
                          "processes, not its template, the namespace's reaper, sibling instances or the host")  # fmt: skip
    why = f"Landlock ABI {landlock_abi} cannot scope signals" if landlock_abi else "no Landlock to scope signals"
    if seccomp and guarded and not siblings:
        return Protection(name, True, f"seccomp ({why}): kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo, "
                          "pidfd_open and F_SETOWN naming pid 1, the template, its threads or its parents, and -1, "
                          "refused; pidfd_send_signal refused; sibling instances stay reachable by their pid: the "
                          "function may run subprocesses (allow_subprocess), which it must stop by their pid "
                          "(subprocess.run's timeout, Popen.kill), and no filter tells its children's pids from its "
                          "siblings'")  # fmt: skip
    if seccomp and guarded:
        return Protection(name, True, f"seccomp ({why}): kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo "
                          "and F_SETOWN naming anything but the instance itself or its process group refused (pid 1, "
                          "the template, its parents, sibling instances, -1: every process; its own children by their "
                          "pid too, which a filter cannot tell from its siblings': reach them through its group); "
                          "pidfd_send_signal refused")  # fmt: skip
    return Protection(name, False, f"{why}, and no seccomp: an instance can signal its template and sibling "
                      "instances (the same uid)")  # fmt: skip
