"""pid 1 of a function's pid namespace: a process of one page that only waits.

The kernel gives pid 1 of a pid namespace two duties, and a template was bad
at one of them.  It delivers to pid 1 no signal that pid 1 has no handler
for, when the signal comes from inside the namespace: a template that was
pid 1 survived its own code's ``os.kill(os.getpid(), SIGKILL)`` at import
(the deploy went on) and its ``os.abort()`` ended, after glibc's SIGABRT was
ignored twice, on a faulting instruction (reported as SIGSEGV).  So the
template is pid 2 and a real signal ends it with its real status; pid 1 is
this reaper, which:

* ignores SIGCHLD, so the kernel reaps whatever is re-parented to it (the
  template is its instances' subreaper: orphans of instances go to the
  template, which kills them; only what outlives the template reaches pid 1);
* blocks in ``read()`` on its *lifeline*, a pipe whose other end only the
  template holds (its instances close it), and exits when that read ends:
  when the template is gone, even with the zygote stopped -- and its exit
  ends every process left in the namespace, the template's instances too, as
  when the template was pid 1.  It dies otherwise only of SIGKILL from outside
  the namespace: the zygote's, or its parent's death signal.

A process forked from the zygote keeps, alone, the old copy of every page the
zygote writes later (hundreds of KiB per process: docs/runtime.md, "Memory"),
and ``/bin/sleep`` costs ~0.1 MiB of private memory for its loader and libc.
The reaper is a static ELF made here, ~200 bytes: one page of text shared by
every reaper (the zygote's memfd) and a page or two of stack each.  Executed
from that memfd (``fexecve``): nothing is written to disk.  Only x86_64 and
aarch64 have one; elsewhere ``program()`` is -1 and the template stays pid 1.
"""

from __future__ import annotations

import os
import signal
import struct
from typing import Final, NoReturn

from spanfaas.sandbox import _libc

__all__ = ["CODE", "become", "elf", "lifeline", "program"]

_BASE: Final = 0x400000
_HEADERS: Final = 64 + 2 * 56  # ELF header, two program headers

# The program, per architecture (e_machine, code): read(0, sp, 1); exit_group(0).
# (Encodings from llvm-mc.  Both are run by tests/unit/sandbox/test_sandbox_reaper_run.py,
# aarch64 under qemu's user-mode emulator; its pid-namespace duties are tested natively only.)
CODE: Final[dict[str, tuple[int, bytes]]] = {
    "x86_64": (0x3E, bytes.fromhex(
        "31c0"  # xor eax, eax: read
        "31ff"  # xor edi, edi: fd 0, the lifeline
        "4889e6"  # mov rsi, rsp
        "ba01000000"  # mov edx, 1
        "0f05"  # syscall
        "b8e7000000"  # mov eax, 231: exit_group
        "31ff"  # xor edi, edi: status 0
        "0f05"  # syscall
    )),
    "aarch64": (0xB7, struct.pack(
        "<8I",
        0xD2800000,  # mov x0, #0: the lifeline
        0x910003E1,  # mov x1, sp
        0xD2800022,  # mov x2, #1
        0xD28007E8,  # mov x8, #63: read
        0xD4000001,  # svc #0
        0xD2800000,  # mov x0, #0: status 0
        0xD2800BC8,  # mov x8, #94: exit_group
        0xD4000001,  # svc #0
    )),
}  # fmt: skip


def elf(arch: str) -> bytes | None:
    """The reaper for ``arch`` as a static ELF64 executable, or None when there is none."""
    found = CODE.get(arch)
    if found is None:
        return None
    machine, code = found
    size = _HEADERS + len(code)
    header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF", 2, 1, 1, 0, 0,  # 64-bit, little-endian, version 1, System V ABI
        2, machine, 1, _BASE + _HEADERS, 64, 0,  # ET_EXEC, entry, program headers at 64, no sections
        0, 64, 56, 2, 64, 0, 0,
    )  # fmt: skip
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)  # PT_LOAD, R+X, the whole file
    stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)  # PT_GNU_STACK, RW: no executable stack
    return header + segment + stack + code


def program() -> int:
    """In the zygote, once: a close-on-exec memfd holding the reaper, or -1 (no reaper for
    this architecture, or no memfd): templates then stay pid 1 of their namespace."""
    image = elf(_libc.ARCH)
    if image is None:
        return -1
    try:
        fd = os.memfd_create("spanfaas-reaper", os.MFD_CLOEXEC)
    except OSError:
        return -1
    os.write(fd, image)
    return fd


PR_SET_PDEATHSIG: Final = 1


def lifeline() -> tuple[int, int]:
    """The reaper's end and the template's, close-on-exec (the zygote closes both once forked)."""
    return os.pipe2(os.O_CLOEXEC)


def become(program_fd: int, lifeline_fd: int) -> NoReturn:
    """In a child just forked as pid 1 of a pid namespace: become the reaper.

    The lifeline's read end becomes fd 0, every other descriptor but the
    program is closed (the reaper must hold no channel open), SIGCHLD is
    ignored (kept across exec: what comes to it is reaped by the kernel), and
    the child dies with its parent (``PR_SET_PDEATHSIG``,
    set first: a parent gone before it is set is not seen -- pid 1 of a new
    namespace has no parent pid to compare -- and that reaper stays, asleep)."""
    try:
        _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.dup2(lifeline_fd, 0)  # (not close-on-exec)
        os.closerange(1, program_fd)
        os.closerange(program_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.execve(program_fd, ["spanfaas-reaper"], {})
    finally:
        os._exit(70)
