"""Linux namespaces: a function sees its own pids, mounts, IPC, hostname, network.

How the runtime uses them (``runtime/zygote.py``), so that a template does
as little as possible itself (each page it writes is its own, not shared):

1. ``NamespacesForNextChildren`` in the zygote, around three forks: the
   zygote unshares pid, mount, IPC, UTS (and net) namespaces, forks the
   namespace's reaper (pid 1, ``reaper.py``), the template (pid 2) and a
   throwaway *fitter* (pid 3), then goes back to its own namespaces with
   ``setns``.
2. ``fit_namespaces`` in the fitter: private mounts, a ``/proc`` of the new
   pid namespace, read-only ``/sys``, hostname, loopback up.  It works on
   the namespaces, which the template shares, and exits.

``unshare_namespaces`` + ``setup_pid1`` do the same from inside one
process (a template's own pid 1 child); tests and ``bench/sandbox.py``
use them.

Pitfalls this layout handles or documents:

* After ``unshare(CLONE_NEWNS)`` mounts may still be *shared* with the host
  (systemd makes ``/`` shared); we make ``/`` recursively private at once,
  before anything is mounted, so nothing propagates back to the host.
* ``setup_pid1`` takes one more mount namespace for itself before mounting
  ``/proc``: otherwise the template (outside the pid namespace, same mount
  namespace) would see a procfs in which ``/proc/self`` does not exist.
* pid 1 ignores signals it has no handler for (sent from inside its
  namespace: its own ``kill(getpid(), SIGKILL)`` too), and when it exits the
  kernel kills the whole namespace and the template can no longer fork into
  it (fork fails with ENOMEM; a second ``unshare(CLONE_NEWPID)`` fails with
  EINVAL).  So user code runs as pid 2+ under a reaper (``reaper.py``), and
  the template is recreated if its pid 1 dies.
"""

from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Sequence
from typing import Final

from spanfaas.model import Protection
from spanfaas.sandbox import _libc
from spanfaas.sandbox._libc import CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS

__all__ = [
    "NAMESPACES",
    "NamespacesForNextChildren",
    "enter_namespaces",
    "fit_namespaces",
    "readonly_but",
    "set_hostname",
    "setup_pid1",
    "unshare_namespaces",
]

# Report name -> clone flag, in the order probe() lists them.
NAMESPACES: Final[dict[str, int]] = {
    "pid-namespace": CLONE_NEWPID,
    "mount-namespace": CLONE_NEWNS,
    "ipc-namespace": CLONE_NEWIPC,
    "uts-namespace": CLONE_NEWUTS,
    "net-namespace": CLONE_NEWNET,
}

# clone flag -> its file under /proc/<pid>/ns/
NS_FILES: Final[dict[int, str]] = {
    CLONE_NEWPID: "pid", CLONE_NEWNS: "mnt", CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts", CLONE_NEWNET: "net",
}  # fmt: skip

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


def denied_reason() -> str:
    """Why creating namespaces gave EPERM, as far as this process can tell."""
    if os.geteuid() == 0:
        return "root without CAP_SYS_ADMIN (dropped by the container or the bounding set): cannot create namespaces"
    return "not root (no CAP_SYS_ADMIN): cannot create namespaces"


def _why(err: OSError) -> str:
    if err.errno == 1:  # EPERM
        return denied_reason()
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


def _mount_setattr(path: str, flags: int, attr: _MountAttr) -> bool:
    """``mount_setattr(2)`` on ``path`` (Linux 5.12+); False where the kernel lacks it."""
    try:
        _libc.syscall(
            "mount_setattr", AT_FDCWD, ctypes.c_char_p(path.encode()), flags,
            ctypes.c_void_p(ctypes.addressof(attr)), ctypes.sizeof(attr),
        )  # fmt: skip
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
        return False
    return True


def _readonly_tree(path: str) -> None:
    """Make ``path`` and every mount below it read-only, in this namespace only.

    One ``mount_setattr(AT_RECURSIVE)`` (Linux 5.12+, other flags kept);
    on older kernels one bind remount per mount point from mountinfo.
    """
    if _mount_setattr(path, AT_RECURSIVE, _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)):
        return
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


def _writable_again(path: str) -> None:
    """The mount at ``path`` (only it, not those below) writable again, its other flags kept."""
    if _mount_setattr(path, 0, _MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0)):
        return
    keep = os.statvfs(path).f_flag
    flags = MS_REMOUNT | MS_BIND
    for st, ms in _KEEP:
        if keep & st:
            flags |= ms
    _libc.mount(None, path, None, flags)


def readonly_but(writable: Sequence[str]) -> Protection:
    """Every mount of this (the function's) namespace read-only, but ``writable``
    (its scratch): in a fitter, as root, once the function's mounts are made.

    A function runs as a uid of its own, so what it could write of the host was
    what anyone may: ``/tmp``, ``/dev/shm``, ``/run/lock``...  Landlock keeps it
    out of them; without Landlock (an older kernel, or one where it is off) a
    function wrote the host's ``/tmp`` (on its disk: past the memory limit; a
    channel to other functions; a symlink in the way of a host service), and a
    strict call's file in ``/dev/shm`` was read by the next call.  Read-only
    mounts do what Landlock would: device files (``/dev/null``) and sockets
    stay writable on them, so nothing Landlock allows changes."""
    try:
        for path in writable:
            if not os.path.ismount(path):
                _libc.mount(path, path, None, MS_BIND)  # a mount of its own, to leave writable
        _readonly_tree("/")
        for path in writable:
            _writable_again(path)
    except OSError as e:
        return Protection("read-only-mounts", False, f"the host's world-writable dirs stay writable: {e}")
    return Protection("read-only-mounts", True, f"every mount read-only but {', '.join(writable)}")


# Per IPC namespace: SysV shared memory segments die with the last process
# attached (or their creator, never attached); no SysV message queues (msgmni),
# no semaphore sets (semmni, the 4th of kernel.sem); no POSIX message queues
# (queues_max: the limit for all but CAP_SYS_RESOURCE, which a function has not).
_IPC_SYSCTLS = (
    ("kernel/shm_rmid_forced", "1"), ("kernel/msgmni", "0"), ("kernel/sem", "0 0 0 0"), ("fs/mqueue/queues_max", "0"),
)  # fmt: skip


def _ipc_dies_with_its_process() -> Protection:
    """IPC objects are the IPC namespace's, not a process's: a SysV segment or
    queue, or a POSIX message queue (``mq_open``), an instance made outlived
    it, and the template's next (strict) instance read it.  In a fresh IPC
    namespace, before ``/proc/sys`` is made read-only: segments go with their
    process, queues and semaphore sets are refused (msgget: ENOSPC; semget:
    EINVAL, as semmsl is 0; mq_open: ENOSPC; Python's multiprocessing uses none
    of them).  (Landlock, where the kernel has it, already kept a function off
    the POSIX queues' file system: EACCES.)"""
    try:
        for key, value in _IPC_SYSCTLS:
            with open(f"/proc/sys/{key}", "w") as f:
                f.write(value)
    except OSError as e:
        return Protection("ipc-namespace", False, f"IPC objects outlive the call that made them: {key}: {e.strerror}")
    return Protection(
        "ipc-namespace", True, "own IPC: SysV shared memory dies with its process, no SysV message queues or "
        "semaphore sets, no POSIX message queues"
    )  # fmt: skip


class NamespacesForNextChildren:
    """The zygote's children get fresh namespaces; the zygote keeps its own.

    ::

        ns = NamespacesForNextChildren("none")
        protections = ns.enter()    # unshare pid, mount, IPC, UTS, net
        pid = fork()                # pid 1 of the new pid namespace
        if pid == 0: ns.forget(); ...
        ns.restore()                # setns back to the zygote's own

    ``unshare`` moves the caller itself into the new mount, IPC, UTS and net
    namespaces (and its *children* into the new pid namespace); ``restore``
    puts the caller back with ``setns`` on descriptors of its own
    namespaces taken before, and its working directory too (``setns`` of a
    mount namespace resets it).  Only a single-threaded process may do this;
    the zygote is one.  Mounts stay shared with the host until someone in
    the new mount namespace makes them private (``fit_namespaces``, first
    thing): nothing is mounted there before.  ``unshared`` has the clone
    flags that took.  A child calls ``forget()``: it must not keep
    descriptors of the host's namespaces.
    """

    def __init__(self, network: str) -> None:
        self.network = network
        self.unshared = 0
        self._own: dict[int, int] = {}
        self._cwd = -1
        self._parent = 0

    def enter(self) -> list[Protection]:
        self._parent = os.getpid()
        wanted = {n: f for n, f in NAMESPACES.items() if n != "net-namespace" or self.network == "none"}
        out: dict[str, Protection] = {}
        if self.network != "none":
            out["net-namespace"] = Protection("net-namespace", False, f"network = {self.network!r}: shares the host network")
        try:
            self._cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
            for flag in wanted.values():
                self._own[flag] = os.open(f"/proc/self/ns/{NS_FILES[flag]}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.forget()
            out.update({n: Protection(n, False, f"cannot open this process's namespaces: {e}") for n in wanted})
            return [out[n] for n in NAMESPACES]
        flags = 0
        for flag in wanted.values():
            flags |= flag
        try:
            _libc.unshare(flags)
            self.unshared = flags
            out.update({n: Protection(n, True, "unshared") for n in wanted})
        except OSError:
            for name, flag in wanted.items():
                try:
                    _libc.unshare(flag)
                    self.unshared |= flag
                    out[name] = Protection(name, True, "unshared")
                except OSError as e:
                    out[name] = Protection(name, False, _why(e))
        return [out[n] for n in NAMESPACES]

    def restore(self) -> None:
        """In the caller (not a child): back to its own namespaces.  Raises
        if it cannot: a zygote left in a function's namespaces must stop."""
        try:
            if os.getpid() == self._parent:
                for flag, fd in self._own.items():
                    if self.unshared & flag:
                        _libc.setns(fd, flag)
                if self.unshared & CLONE_NEWNS and self._cwd >= 0:
                    os.fchdir(self._cwd)
        finally:
            self.forget()

    def forget(self) -> None:
        """Close the descriptors of the caller's own namespaces (in a child: at once)."""
        for fd in (*self._own.values(), self._cwd):
            if fd >= 0:
                os.close(fd)
        self._own = {}
        self._cwd = -1


def enter_namespaces(pid: int, flags: int) -> None:
    """Join ``pid``'s mount and UTS namespaces (those among ``flags``): a
    fitter forked by the zygote for a spare it made earlier.  Every
    descriptor is opened first: once in the new mount namespace, ``/proc``
    is the spare's, where ``pid`` is 1."""
    fds = {}
    try:
        for flag in (CLONE_NEWNS, CLONE_NEWUTS):
            if flags & flag:
                fds[flag] = os.open(f"/proc/{pid}/ns/{NS_FILES[flag]}", os.O_RDONLY | os.O_CLOEXEC)
        for flag, fd in fds.items():
            _libc.setns(fd, flag)
    finally:
        for fd in fds.values():
            os.close(fd)


def unshare_namespaces(network: str, *, pid: bool = True) -> list[Protection]:
    """Unshare pid, mount, IPC, UTS and (when ``network == "none"``) net.

    All at once when allowed (one syscall), else one by one so each that the
    host permits still applies.  Returns one Protection per namespace.
    The caller's next child is pid 1 of the new pid namespace.  With
    ``pid=False`` the pid namespace is left alone (the caller already is
    pid 1 of its own, made by its parent) and reported so.
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


def set_hostname(name: str, unshared: int | None = None) -> Protection:
    """The function's name as hostname, in its own UTS namespace only
    (``unshared``: the clone flags that took; by default this process's)."""
    if not (_unshared if unshared is None else unshared) & CLONE_NEWUTS:
        return Protection("uts-namespace", False, "no UTS namespace was unshared: hostname left alone")
    try:
        _libc.sethostname(name)
    except OSError as e:
        return Protection("uts-namespace", False, f"sethostname: {e.strerror}")
    return Protection("uts-namespace", True, f"hostname {name!r}")


def fit_namespaces(unshared: int, name: str | None, network: str) -> list[Protection]:
    """In a fitter: a process forked inside a template's fresh namespaces
    (``NamespacesForNextChildren``), pid 2 of its pid namespace.  Makes
    them what the template needs -- private mounts, a ``/proc`` of its pid
    namespace, read-only ``/sys``, hostname (when ``name`` is known),
    loopback up -- and says so; the template, which shares them, does none
    of it.  ``unshared``: the clone flags that took."""
    mounts_ok = False
    out: list[Protection] = []
    if unshared & CLONE_NEWNS:
        try:
            _make_private()
            mounts_ok = True
            out.append(Protection("mount-namespace", True, "private mounts"))
        except OSError as e:
            out.append(Protection("mount-namespace", False, f"unshared, but mounts stay shared with the host: {e.strerror}"))
    return out + _finish_namespaces(unshared, mounts_ok, bool(unshared & CLONE_NEWPID), name, network)


def _finish_namespaces(unshared: int, mounts_ok: bool, in_pid_ns: bool, name: str | None, network: str) -> list[Protection]:
    """/proc, read-only /sys, hostname, loopback: for ``setup_pid1`` and ``fit_namespaces``."""
    out: list[Protection] = []
    if not in_pid_ns:
        out.append(Protection("pid-namespace", False, f"caller is pid {os.getpid()}, not in a new pid namespace"))
    elif not mounts_ok:
        why = "new pid namespace, but /proc not remounted (no private mount namespace): host pids visible"
        out.append(Protection("pid-namespace", False, why))
    else:
        try:
            _libc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            out.append(Protection("pid-namespace", True, "pid 1 with its own /proc"))
        except OSError as e:
            out.append(Protection("pid-namespace", False, f"pid 1, but mounting /proc failed: {e.strerror}"))
    if unshared & CLONE_NEWIPC:
        out.append(_ipc_dies_with_its_process())
    if mounts_ok:
        try:
            _readonly_system_trees()
            why = "private mounts, /sys and /proc/sys read-only"
        except OSError as e:
            why = f"private mounts; /sys or /proc/sys stays writable: {e}"
        out.append(Protection("mount-namespace", True, why))
    if name is not None:
        out.append(set_hostname(name, unshared))
    if network == "none" and not unshared & CLONE_NEWNET:
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
    except OSError as e:
        out.append(Protection("mount-namespace", False, _why(e)))
    return out + _finish_namespaces(_unshared, mounts_ok, os.getpid() == 1, name, network)
