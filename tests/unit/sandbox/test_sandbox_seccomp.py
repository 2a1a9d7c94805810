"""seccomp deny-list: forbidden calls fail with EPERM, ordinary Python still works."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from spanfaas.sandbox import seccomp_deny
from spanfaas.sandbox.seccomp import _ARCHES, build_filter

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

X86_64 = platform.machine() == "x86_64"
NR = _ARCHES[platform.machine()].nr if platform.machine() in _ARCHES else {}
CLONE_NEWUTS = 0x04000000
SIGCHLD = 17
ADDR_NO_RANDOMIZE = 0x0040000
RLIMIT_FSIZE = 1


def _errno_of(nr: int, *args: int) -> str:
    ret = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if ret >= 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]


def _exec_true() -> str:
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["true"])
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return "exec ok" if os.waitstatus_to_exitcode(status) == 0 else "exec failed"


def _filtered(allow_exec: bool) -> dict[str, Any]:
    applied = seccomp_deny(allow_exec)
    out: dict[str, Any] = {"active": applied.active, "reason": applied.reason}
    out["exec"] = _exec_true()
    if not allow_exec:  # allowed, it would replace this child
        try:
            os.execv("/bin/true", ["true"])
        except PermissionError as e:
            out["execv_errno"] = errno.errorcode[e.errno or 0]
    out["ptrace"] = _errno_of(NR["ptrace"], 0, 0, 0, 0)  # PTRACE_TRACEME
    out["unshare"] = _errno_of(NR["unshare"], CLONE_NEWUTS)
    out["setns"] = _errno_of(NR["setns"], 0, 0)
    out["mount"] = _errno_of(NR["mount"], 0, 0, 0, 0, 0)
    out["bpf"] = _errno_of(NR["bpf"], 0, 0, 0)
    out["io_uring_setup"] = _errno_of(NR["io_uring_setup"], 1, 0)
    out["clone_newuts"] = _errno_of(NR["clone"], CLONE_NEWUTS | SIGCHLD, 0, 0, 0, 0)
    out["clone3"] = _errno_of(NR["clone3"], 0, 0)
    # Kernel attack surface no Python function needs: x86 LDT entries; execution
    # domains beyond Linux's own (ADDR_NO_RANDOMIZE turns ASLR off for what it execs).
    out["modify_ldt"] = _errno_of(154, 1, 0, 0) if X86_64 else "EPERM"  # write_ldt
    out["personality_no_aslr"] = _errno_of(NR["personality"], ADDR_NO_RANDOMIZE)
    out["personality_query"] = _errno_of(NR["personality"], 0xFFFFFFFF)
    out["personality_linux"] = _errno_of(NR["personality"], 0)
    # Another process's limits (its parent's: a template's, inherited by its next instances):
    # read, not set.  Its own, by pid 0 (setrlimit), set.
    limit = (ctypes.c_uint64 * 2)()
    out["prlimit_parent_read"] = _errno_of(NR["prlimit64"], os.getppid(), RLIMIT_FSIZE, 0, ctypes.addressof(limit))
    out["prlimit_parent_set"] = _errno_of(NR["prlimit64"], os.getppid(), RLIMIT_FSIZE, ctypes.addressof(limit), 0)
    out["prlimit_own_set"] = _errno_of(NR["prlimit64"], 0, RLIMIT_FSIZE, ctypes.addressof(limit), 0)
    # Its parent's scheduling, as another process's limits: its own, by 0, only.
    nice, cpus = os.getpriority(os.PRIO_PROCESS, os.getppid()), os.sched_getaffinity(os.getppid())
    for name, call in (
        ("setpriority_parent", lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), nice)),
        ("setpriority_uid", lambda: os.setpriority(os.PRIO_USER, 0, nice)),
        ("setpriority_own", lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))),
        ("affinity_parent", lambda: os.sched_setaffinity(os.getppid(), cpus)),
        ("affinity_own", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0))),
        ("sched_param_parent", lambda: os.sched_setparam(os.getppid(), os.sched_getparam(os.getppid()))),
    ):
        try:
            call()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno or 0]
    # What must keep working: fork, threads (glibc falls back from clone3), files.
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    box: list[int] = []
    t = threading.Thread(target=lambda: box.append(threading.get_native_id()))
    t.start()
    t.join()
    out["thread"] = bool(box) and box[0] != threading.get_native_id()
    return out


@pytest.mark.parametrize("allow_exec", [False, True])
def test_deny_list(allow_exec: bool, in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("seccomp")
    got = in_child(_filtered, allow_exec).value
    assert got["active"], got["reason"]
    if allow_exec:
        assert got["exec"] == "exec ok"
    else:
        assert got["exec"] == "exec failed"
        assert got["execv_errno"] == "EPERM"
    for call in ("ptrace", "unshare", "setns", "mount", "bpf", "io_uring_setup", "clone_newuts", "modify_ldt", "personality_no_aslr"):
        assert got[call] == "EPERM", call
    assert got["personality_query"] == got["personality_linux"] == "ok", "uname, platform and exec keep working"
    assert got["clone3"] == "ENOSYS"
    assert (got["prlimit_parent_read"], got["prlimit_parent_set"], got["prlimit_own_set"]) == ("ok", "EPERM", "ok")
    for call in ("setpriority_parent", "setpriority_uid", "affinity_parent", "sched_param_parent"):
        assert got[call] == "EPERM", call
    assert got["setpriority_own"] == got["affinity_own"] == "ok"
    assert got["fork"] == 7
    assert got["thread"] is True


def _x32_getpid() -> int:
    seccomp_deny(True)
    return int(libc.syscall(ctypes.c_long(0x40000000 | 39)))


def _i386_getpid(filtered: bool) -> int:
    """Run ``mov eax, 20 (i386 getpid); int 0x80; ret`` from an executable page."""
    if filtered:
        seccomp_deny(True)
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return int(ctypes.CFUNCTYPE(ctypes.c_int)(addr)())


@pytest.mark.skipif(not X86_64, reason="x32 and i386 ABIs exist on x86_64 only")
def test_foreign_abi_is_killed(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("seccomp")
    assert in_child(_x32_getpid).signal == signal.SIGSYS
    assert in_child(_i386_getpid, True).signal == signal.SIGSYS
    unfiltered = in_child(_i386_getpid, False)
    assert unfiltered.signal is None, "the i386 entry works without the filter, so the test is meaningful"


@pytest.mark.parametrize("arch", sorted(_ARCHES))
def test_filter_assembles_for_every_arch(arch: str) -> None:
    prog = build_filter(arch, allow_exec=False)
    assert 0 < len(prog) < 4096
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in prog)
    assert prog[-1][0] == 0x06, "ends with a return"
    assert len(build_filter(arch, allow_exec=True)) == len(prog) - 2


def _unix_sockets(unix_sockets: bool) -> dict[str, str]:
    import socket

    seccomp_deny(True, unix_sockets=unix_sockets)
    out = {}
    for name, family in (("unix", socket.AF_UNIX), ("inet", socket.AF_INET), ("vsock", socket.AF_VSOCK)):
        try:
            socket.socket(family).close()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno or 0]
    # The kernel's device events reach every network namespace of the host: refused; route
    # (and the other netlink families) answer about the caller's own network: allowed.
    for name, proto in (("uevent netlink", 15), ("route netlink", 0)):
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, proto).close()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno or 0]
    a, b = socket.socketpair()  # asyncio's self-pipe, multiprocessing's pipes
    a.close()
    b.close()
    out["socketpair"] = "ok"
    # A datagram socket of a pair sends to any path socket it names (sendto, or connect
    # again): a way around the refused socket(AF_UNIX).  (SOCK_RAW is a datagram one for AF_UNIX.)
    for name, kind in (("dgram pair", socket.SOCK_DGRAM), ("raw pair", socket.SOCK_RAW),
                       ("nonblocking dgram pair", socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC),
                       ("seqpacket pair", socket.SOCK_SEQPACKET)):  # fmt: skip
        try:
            a, b = socket.socketpair(socket.AF_UNIX, kind)
            a.close()
            b.close()
            out[name] = "ok"
        except OSError as e:
            out[name] = errno.errorcode[e.errno or 0]
    return out


@pytest.mark.parametrize("unix_sockets", [False, True])
def test_unix_sockets_are_denied_without_network_and_socketpair_stays(
    unix_sockets: bool, in_child: Callable[..., Any], require: Callable[..., None]
) -> None:
    """vsock too: its addresses are no network namespace's (in a VM: the hypervisor's services);
    and uevent netlink: the host's device events reach every network namespace."""
    require("seccomp")
    got = in_child(_unix_sockets, unix_sockets).value
    denied = "ok" if unix_sockets else "EPERM"
    vsock = ("ok" if _has_vsock() else "EAFNOSUPPORT") if unix_sockets else "EPERM"
    assert got == {
        "unix": denied, "inet": "ok", "vsock": vsock, "socketpair": "ok", "dgram pair": denied, "raw pair": denied,
        "nonblocking dgram pair": denied, "seqpacket pair": "ok", "uevent netlink": denied, "route netlink": "ok",
    }  # fmt: skip


def _has_vsock() -> bool:
    import socket

    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


@pytest.mark.parametrize("arch", sorted(_ARCHES))
def test_the_signal_guard_assembles_for_every_arch(arch: str) -> None:
    from spanfaas.sandbox.seccomp import build_guard

    guarded = build_filter(arch, allow_exec=False, guarded=(1, 2))
    assert len(build_filter(arch, allow_exec=False)) < len(guarded) < 255
    assert all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in guarded)
    alone = build_guard(arch, (1, 2, 3))
    assert alone[-1][0] == 0x06 and all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in alone)


def _signals(parent: int, how: str) -> dict[str, str]:
    """Under the guard of ``parent`` (the test's process), with signal 0 only: nothing is sent even
    where it is let through.  Its own group, its children, and other calls must still work."""
    import fcntl

    from spanfaas.sandbox.seccomp import signal_guard

    os.setpgid(0, 0)
    if how == "deny-list":
        assert seccomp_deny(True, guarded=(1, parent)).active
    else:
        assert signal_guard((1, parent))
    info = (ctypes.c_int * 32)()
    info[2] = -1  # SI_QUEUE
    out = {
        "kill": _errno_of(NR["kill"], parent, 0),
        "killpg": _errno_of(NR["kill"], -parent, 0),
        "kill -1": _errno_of(NR["kill"], -1, 0),
        "kill 1": _errno_of(NR["kill"], 1, 0),
        "kill high word": _errno_of(NR["kill"], (1 << 32) | parent, 0),
        "tkill": _errno_of(NR["tkill"], parent, 0),
        "tgkill": _errno_of(NR["tgkill"], parent, parent, 0),
        "rt_sigqueueinfo": _errno_of(NR["rt_sigqueueinfo"], parent, 0, ctypes.addressof(info)),
        "rt_tgsigqueueinfo": _errno_of(NR["rt_tgsigqueueinfo"], parent, parent, 0, ctypes.addressof(info)),
        "pidfd_open": _errno_of(NR["pidfd_open"], parent, 0),
    }
    own = os.pidfd_open(os.getpid())
    try:
        out["pidfd_send_signal"] = _errno_of(NR["pidfd_send_signal"], own, 0, 0, 0)
    finally:
        os.close(own)
    r, w = os.pipe()
    out["F_SETOWN"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, parent)
    out["F_SETOWN own"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, os.getpid())
    out["F_GETFL"] = "ok" if fcntl.fcntl(r, fcntl.F_GETFL) >= 0 else "failed"
    os.close(r)
    os.close(w)
    out["kill own group"] = _errno_of(NR["kill"], 0, 0)
    out["killpg own group"] = _errno_of(NR["kill"], -os.getpgrp(), 0)
    out["kill self"] = _errno_of(NR["kill"], os.getpid(), 0)
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    out["kill own child"] = _errno_of(NR["kill"], child, int(signal.SIGKILL))
    _, status = os.waitpid(child, 0)
    out["child killed"] = "ok" if os.WTERMSIG(status) == signal.SIGKILL else "no"
    return out


@pytest.mark.parametrize("how", ["deny-list", "alone"])
def test_the_signal_guard_refuses_signals_to_its_guarded_pids_only(
    in_child: Callable[..., Any], require: Callable[..., None], how: str
) -> None:
    require("seccomp")
    got = in_child(_signals, os.getpid(), how).value
    refused = ["kill", "killpg", "kill -1", "kill 1", "kill high word", "tkill", "tgkill", "rt_sigqueueinfo",
               "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal", "F_SETOWN"]  # fmt: skip
    assert {k: got[k] for k in refused} == dict.fromkeys(refused, "EPERM"), got
    allowed = [k for k in got if k not in refused]
    assert {k: got[k] for k in allowed} == dict.fromkeys(allowed, "ok"), got


@pytest.mark.parametrize("arch", sorted(_ARCHES))
def test_the_instance_guard_assembles_for_every_arch(arch: str) -> None:
    from spanfaas.sandbox.seccomp import _OWN, _OWN_GROUP, build_instance_guard

    insns = build_instance_guard(arch)
    assert insns[-1][0] == 0x06 and all(0 <= jt <= 255 and 0 <= jf <= 255 for _, jt, jf, _ in insns)
    assert {k for *_, k in insns} >= {_OWN, _OWN_GROUP}


def _instance_signals(sibling: int) -> dict[str, str]:
    """An instance under its own guard (signal 0 only, as ``_signals``): nothing but itself,
    its threads and its group; ``sibling`` (a process of the test's, the same uid) refused."""
    import fcntl

    from spanfaas.sandbox import _libc
    from spanfaas.sandbox.seccomp import instance_guard

    os.setpgid(0, 0)
    _libc.no_new_privs()
    instance_guard(_libc.ARCH).install(os.getpid())
    me = os.getpid()
    info = (ctypes.c_int * 32)()
    info[2] = -1  # SI_QUEUE
    info[4], info[5] = me, os.getuid()
    out = {
        "kill sibling": _errno_of(NR["kill"], sibling, 0),
        "kill sibling group": _errno_of(NR["kill"], -sibling, 0),
        "kill parent": _errno_of(NR["kill"], os.getppid(), 0),
        "kill -1": _errno_of(NR["kill"], -1, 0),
        "kill high word": _errno_of(NR["kill"], (1 << 32) | sibling, 0),
        "tkill sibling": _errno_of(NR["tkill"], sibling, 0),
        "tgkill sibling": _errno_of(NR["tgkill"], sibling, sibling, 0),
        "tgkill sibling's thread as ours": _errno_of(NR["tgkill"], me, sibling, 0),
        "rt_sigqueueinfo sibling": _errno_of(NR["rt_sigqueueinfo"], sibling, 0, ctypes.addressof(info)),
        "rt_tgsigqueueinfo sibling": _errno_of(NR["rt_tgsigqueueinfo"], sibling, sibling, 0, ctypes.addressof(info)),
    }
    r, w = os.pipe()
    out["F_SETOWN sibling"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, sibling)
    out["F_SETOWN own"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, me)
    out["F_SETOWN own group"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, -me)
    out["F_SETOWN none"] = _errno_of(NR["fcntl"], r, fcntl.F_SETOWN, 0)
    os.close(r)
    os.close(w)
    out["kill own group"] = _errno_of(NR["kill"], 0, 0)
    out["killpg own group"] = _errno_of(NR["kill"], -me, 0)
    out["kill self"] = _errno_of(NR["kill"], me, 0)
    out["tkill self"] = _errno_of(NR["tkill"], me, 0)
    out["rt_sigqueueinfo self"] = _errno_of(NR["rt_sigqueueinfo"], me, 0, ctypes.addressof(info))
    out["tgkill own thread"] = _errno_of(NR["tgkill"], me, me, 0)
    out["rt_tgsigqueueinfo own"] = _errno_of(NR["rt_tgsigqueueinfo"], me, me, 0, ctypes.addressof(info))
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    out["kill own child by pid"] = _errno_of(NR["kill"], child, int(signal.SIGKILL))
    out["child in own group"] = "ok" if os.getpgid(child) == me else "no"
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # (not the child: it ends of it, through the group)
    os.killpg(me, signal.SIGUSR2)
    _, status = os.waitpid(child, 0)
    out["child ended through the group"] = "ok" if os.WTERMSIG(status) == signal.SIGUSR2 else "no"
    out["pidfd_open sibling"] = _errno_of(NR["pidfd_open"], sibling, 0)  # (a pidfd signals nothing: pidfd_send_signal is the deny-list's)
    return out


def test_the_instance_guard_refuses_every_pid_but_its_own_and_its_group(
    in_child: Callable[..., Any], require: Callable[..., None]
) -> None:
    require("seccomp")
    sibling = os.fork()
    if sibling == 0:
        time.sleep(30)
        os._exit(0)
    try:
        got = in_child(_instance_signals, sibling).value
    finally:
        os.kill(sibling, signal.SIGKILL)
        os.waitpid(sibling, 0)
    refused = [k for k in got if "sibling" in k or k in ("kill parent", "kill -1", "kill high word", "kill own child by pid")]
    # (tgkill naming our own thread group lets the kernel judge the thread: not one of ours, ESRCH)
    expected = dict.fromkeys(refused, "EPERM") | {"pidfd_open sibling": "ok", "tgkill sibling's thread as ours": "ESRCH"}
    assert {k: got[k] for k in refused} == expected, got
    allowed = [k for k in got if k not in refused]
    assert {k: got[k] for k in allowed} == dict.fromkeys(allowed, "ok"), got
