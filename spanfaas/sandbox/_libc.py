"""Thin ctypes bindings to the libc calls the sandbox needs.

The sandbox talks to the kernel directly (no daemon, no helper binary, no
new dependency), so every call here is a plain libc function or a raw
``syscall(2)`` for the ones glibc does not wrap (Landlock, clone3).  All
functions raise ``OSError`` with the real errno, so callers can turn a
specific errno (EPERM, ENOSYS, EOPNOTSUPP) into a precise reason.

Function pointers are resolved once at import: resolving a symbol in a
forked child of a threaded process can deadlock in the dynamic loader.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

__all__ = [
    "ARCH",
    "CLONE_NEWIPC",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWPID",
    "CLONE_NEWUTS",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "NR",
    "has_caps",
    "no_new_privs",
    "mount",
    "prctl",
    "sethostname",
    "syscall",
    "umount2",
    "unescape_mount_field",
    "unshare",
]

ARCH: Final = platform.machine()

# Linux clone(2)/unshare(2) flags (include/uapi/linux/sched.h).
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

# Capability bits (include/uapi/linux/capability.h).
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7
CAP_SYS_ADMIN: Final = 21

# prctl(2) options (include/uapi/linux/prctl.h).
PR_SET_SECCOMP: Final = 22
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39

# Syscall numbers for the calls glibc does not wrap.  These postdate the
# unified syscall table, so every architecture got the same numbers.
_NR_BY_ARCH: Final[dict[str, dict[str, int]]] = {  # fmt: skip
    "x86_64": {
        "open_tree": 428, "move_mount": 429, "mount_setattr": 442,
        "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    },
    "aarch64": {
        "open_tree": 428, "move_mount": 429, "mount_setattr": 442,
        "landlock_create_ruleset": 444, "landlock_add_rule": 445, "landlock_restrict_self": 446,
    },
}
NR: Final[dict[str, int]] = _NR_BY_ARCH.get(ARCH, {})

_libc = ctypes.CDLL(None, use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

_unshare = _libc.unshare
_unshare.restype = ctypes.c_int
_unshare.argtypes = [ctypes.c_int]

_setns = _libc.setns
_setns.restype = ctypes.c_int
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_mount = _libc.mount
_mount.restype = ctypes.c_int
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]

_umount2 = _libc.umount2
_umount2.restype = ctypes.c_int
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

_sethostname = _libc.sethostname
_sethostname.restype = ctypes.c_int
_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def syscall(name: str, *args: int | ctypes.c_void_p | ctypes.c_char_p | None) -> int:
    """Invoke a raw syscall by name; ints are passed as C longs.

    Raises ``OSError(ENOSYS)`` for a syscall this module has no number for
    on this architecture, exactly as the kernel would for a missing one.
    """
    nr = NR.get(name)
    if nr is None:
        raise OSError(38, f"{name}: no syscall number known for {ARCH}")
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = int(_syscall(ctypes.c_long(nr), *cargs))
    if ret < 0:
        raise _fail(name)
    return ret


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = int(_prctl(option, arg2, arg3, arg4, arg5))
    if ret < 0:
        raise _fail(f"prctl({option})")
    return ret


def has_caps(*caps: int) -> bool:
    """Whether the caller holds every capability in ``caps`` (effective set).

    "Root" is not enough to know: containers and ``setpriv`` hand out uid 0
    without capabilities, and that is what the kernel checks.
    """
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return os.geteuid() == 0
    return all(eff >> c & 1 for c in caps)


def unescape_mount_field(field: str) -> str:
    r"""Undo /proc/self/mountinfo's octal escapes (``\040`` is a space).

    By hand rather than with the ``unicode_escape`` codec: that codec is
    imported lazily on first use (~1 ms), which fails once Landlock is on.
    """
    if "\\" not in field:
        return field
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(chr(int(part[:3], 8)) + part[3:])
    return "".join(out)


def no_new_privs() -> None:
    """Set PR_SET_NO_NEW_PRIVS: execve can never grant privileges again.

    Required before an unprivileged seccomp filter or Landlock layer, and a
    good idea in any case (setuid binaries lose their power).
    """
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def unshare(flags: int) -> None:
    if _unshare(flags) < 0:
        raise _fail(f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    if _setns(fd, nstype) < 0:
        raise _fail(f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    ret = _mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        flags,
        data.encode() if data is not None else None,
    )
    if ret < 0:
        raise _fail(f"mount {target}")


def umount2(target: str, flags: int) -> None:
    if _umount2(target.encode(), flags) < 0:
        raise _fail(f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    if _sethostname(raw, len(raw)) < 0:
        raise _fail("sethostname")
