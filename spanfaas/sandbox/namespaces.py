"""Linux namespaces: a function sees its own pids, mounts, IPC, hostname, network.

Two steps, because a new pid namespace only applies to the caller's
*children*:

1. ``unshare_namespaces`` in the template: new mount, IPC, UTS, (net) and
   pid namespaces.  The template stays in the host pid namespace; its next
   fork becomes pid 1 of the new one.
2. ``setup_pid1`` in that first child: private mounts, its own ``/proc``,
   hostname, loopback up.

Pitfalls this layout handles or documents:

* After ``unshare(CLONE_NEWNS)`` mounts may still be *shared* with the host
  (systemd makes ``/`` shared); we make ``/`` recursively private at once,
  before anything is mounted, so nothing propagates back to the host.
* ``setup_pid1`` takes one more mount namespace for itself before mounting
  ``/proc``: otherwise the template (outside the pid namespace, same mount
  namespace) would see a procfs in which ``/proc/self`` does not exist.
* pid 1 ignores signals it has no handler for, and when it exits the kernel
  kills the whole namespace and the template can no longer fork into it
  (fork fails with ENOMEM; a second ``unshare(CLONE_NEWPID)`` fails with
  EINVAL).  Run user code as pid 2+ under a reaper, and recreate the
  template if its pid 1 dies.
"""

from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import struct
from typing import Final

from spanfaas.model import Protection
from spanfaas.sandbox import _libc
from spanfaas.sandbox._libc import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS

__all__ = ["NAMESPACES", "PidNamespaceForNextChild", "set_hostname", "setup_pid1", "unshare_namespaces"]

# Report name -> clone flag, in the order probe() lists them.
NAMESPACES: Final[dict[str, int]] = {
    "pid-namespace": CLONE_NEWPID,
    "mount-namespace": CLONE_NEWNS,
    "ipc-namespace": CLONE_NEWIPC,
    "uts-namespace": CLONE_NEWUTS,
    "net-namespace": CLONE_NEWNET,
}

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_REMOUNT: Final = 0x20
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 0x40000
MS_RELATIME: Final = 0x200000
# statvfs f_flag bit -> mount flag to keep on a bind remount (RDONLY is forced anyway).
_KEEP: Final = (
    (2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME), (4096, MS_RELATIME),
)  # fmt: skip

AT_FDCWD: Final = -100
AT_RECURSIVE: Final = 0x8000
MOUNT_ATTR_RDONLY: Final = 0x1

SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
IFF_UP: Final = 0x1
_IFREQ: Final = struct.Struct("16sH22x")  # struct ifreq: name + ifr_flags, 40 bytes

# Flags this process (or the template it was forked from) really unshared.
# setup_pid1 must not call sethostname unless the UTS namespace is new: as
# root, that would rename the host.  Inherited across fork, which is the only
# way setup_pid1 is meant to be reached.
_unshared = 0
_unshared_by = 0  # the pid that did: a child inherits the flags, not the mount namespace of its own


def _why(err: OSError) -> str:
    if err.errno == 1:  # EPERM
        return "not root (no CAP_SYS_ADMIN): cannot create namespaces"
    if err.errno == 22:  # EINVAL
        return f"kernel refused ({err.strerror}); not built in, or a pid namespace was already unshared"
    return err.strerror or str(err)


def _make_private() -> None:
    """Stop mount propagation between this mount namespace and its peers."""
    _libc.mount(None, "/", None, MS_REC | MS_PRIVATE)


def _remount_readonly(path: str) -> None:
    """Make one mount point read-only in this mount namespace only, keeping its other flags."""
    keep = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st, ms in _KEEP:
        if keep & st:
            flags |= ms
    _libc.mount(None, path, None, flags)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _readonly_tree(path: str) -> None:
    """Make ``path`` and every mount below it read-only, in this namespace only.

    One ``mount_setattr(AT_RECURSIVE)`` (Linux 5.12+, other flags kept);
    on older kernels one bind remount per mount point from mountinfo.
    """
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    try:
        _libc.syscall(
            "mount_setattr", AT_FDCWD, ctypes.c_char_p(path.encode()), AT_RECURSIVE,
            ctypes.c_void_p(ctypes.addressof(attr)), ctypes.sizeof(attr),
        )  # fmt: skip
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    with open("/proc/self/mountinfo") as f:
        points = [_libc.unescape_mount_field(line.split()[4]) for line in f]
    for point in points:
        if point == path or point.startswith(path + "/"):
            _remount_readonly(point)


def _readonly_system_trees() -> None:
    """/sys (with every submount, cgroupfs included) and /proc/sys read-only.

    Most sysctls and sysfs knobs are host-wide, not namespaced: a function
    still running as root must not reach them.  Only this mount namespace
    changes; the runtime outside still manages cgroups.
    """
    for path in ("/proc/sys", "/proc/sysrq-trigger"):
        if os.path.exists(path):
            _libc.mount(path, path, None, MS_BIND | MS_REC)
            _readonly_tree(path)
    _readonly_tree("/sys")


class PidNamespaceForNextChild:
    """``with PidNamespaceForNextChild() as prot: pid = fork()``: that child is
    pid 1 of a new pid namespace, and the caller's later children are not.

    ``unshare(CLONE_NEWPID)`` changes only where the caller's *children* go;
    ``setns`` on the caller's own namespace puts that back.  So a long-lived
    forking process (the zygote) can give each child its own pid namespace
    without an intermediate process.  ``prot`` says whether it worked.
    """

    def __enter__(self) -> Protection:
        self._own = -1
        self._parent = os.getpid()
        try:
            self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            _libc.unshare(CLONE_NEWPID)
        except OSError as e:
            return Protection("pid-namespace", False, _why(e))
        return Protection("pid-namespace", True, "unshared")

    def __exit__(self, *exc: object) -> None:
        if self._own < 0:
            return
        try:
            if os.getpid() == self._parent:  # the child leaves the block too: it stays where it is
                _libc.setns(self._own, CLONE_NEWPID)
        finally:
            os.close(self._own)


def unshare_namespaces(network: str, *, pid: bool = True) -> list[Protection]:
    """Unshare pid, mount, IPC, UTS and (when ``network == "none"``) net.

    All at once when allowed (one syscall), else one by one so each that the
    host permits still applies.  Returns one Protection per namespace.
    The caller's next child is pid 1 of the new pid namespace.  With
    ``pid=False`` the pid namespace is left alone (the caller already is
    pid 1 of its own, see ``PidNamespaceForNextChild``) and reported so.
    """
    global _unshared, _unshared_by
    _unshared_by = os.getpid()
    wanted = dict(NAMESPACES)
    out: dict[str, Protection] = {}
    if not pid:
        del wanted["pid-namespace"]
        out["pid-namespace"] = Protection("pid-namespace", os.getpid() == 1, "created by the parent")
    if network != "none":
        del wanted["net-namespace"]
        out["net-namespace"] = Protection("net-namespace", False, f"network = {network!r}: shares the host network")
    try:
        flags = 0
        for flag in wanted.values():
            flags |= flag
        _libc.unshare(flags)
        out.update({n: Protection(n, True, "unshared") for n in wanted})
    except OSError:
        for name, flag in wanted.items():
            try:
                _libc.unshare(flag)
                out[name] = Protection(name, True, "unshared")
            except OSError as e:
                out[name] = Protection(name, False, _why(e))
    for name, p in out.items():
        if p.active:
            _unshared |= NAMESPACES[name]
    if out["mount-namespace"].active:
        try:
            _make_private()
        except OSError as e:
            why = f"unshared, but mounts stay shared with the host: {e.strerror}"
            out["mount-namespace"] = Protection("mount-namespace", False, why)
    return [out[n] for n in NAMESPACES]


def _loopback_up() -> None:
    """``ip link set lo up`` without exec: SIOCSIFFLAGS on a throwaway socket."""
    # _socket's type, not socket.socket: its Python __init__/__exit__ would
    # un-share pages of the zygote in every template.
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = bytearray(_IFREQ.pack(b"lo", 0))
        fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
        _, flags = _IFREQ.unpack(req)
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
    finally:
        s.close()


def set_hostname(name: str) -> Protection:
    """The function's name as hostname, in its own UTS namespace only."""
    if not _unshared & CLONE_NEWUTS:
        return Protection("uts-namespace", False, "no UTS namespace was unshared: hostname left alone")
    try:
        _libc.sethostname(name)
    except OSError as e:
        return Protection("uts-namespace", False, f"sethostname: {e.strerror}")
    return Protection("uts-namespace", True, f"hostname {name!r}")


def setup_pid1(name: str | None, network: str) -> list[Protection]:
    """Finish the namespaces from inside pid 1: mounts, /proc, hostname, loopback.

    Returns Protections for what this step made real: "pid-namespace"
    (pid 1 with its own /proc), "mount-namespace" (private, own copy),
    "uts-namespace" (hostname; left to ``set_hostname`` when ``name`` is
    None: a spare learns its function's name later), "net-namespace"
    (loopback up).
    """
    out: list[Protection] = []
    mounts_ok = False
    try:
        if not (_unshared & CLONE_NEWNS and _unshared_by == os.getpid()):
            _libc.unshare(CLONE_NEWNS)  # a copy of the parent's: it must not see our /proc
            _make_private()
        mounts_ok = True
        out.append(Protection("mount-namespace", True, "private mounts, own copy for pid 1"))
    except OSError as e:
        out.append(Protection("mount-namespace", False, _why(e)))
    if os.getpid() != 1:
        out.append(Protection("pid-namespace", False, f"caller is pid {os.getpid()}, not pid 1 of a new pid namespace"))
    elif not mounts_ok:
        why = "pid 1, but /proc not remounted (no private mount namespace): host pids visible"
        out.append(Protection("pid-namespace", False, why))
    else:
        try:
            _libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            out.append(Protection("pid-namespace", True, "pid 1 with its own /proc"))
        except OSError as e:
            out.append(Protection("pid-namespace", False, f"pid 1, but mounting /proc failed: {e.strerror}"))
    if mounts_ok:
        try:
            _readonly_system_trees()
            why = "private mounts, own copy for pid 1, /sys and /proc/sys read-only"
        except OSError as e:
            why = f"private mounts, own copy for pid 1; /sys or /proc/sys stays writable: {e}"
        out[0] = Protection("mount-namespace", True, why)
    if name is not None:
        out.append(set_hostname(name))
    if network == "none" and not _unshared & CLONE_NEWNET:
        out.append(Protection("net-namespace", False, "no network namespace was unshared: host network visible"))
    elif network == "none":
        try:
            _loopback_up()
            out.append(Protection("net-namespace", True, "loopback only"))
        except OSError as e:
            out.append(Protection("net-namespace", False, f"bringing loopback up failed: {e.strerror}"))
    else:
        out.append(Protection("net-namespace", False, f"network = {network!r}: shares the host network"))
    return out
