"""How the zygote forks templates and a template its instances: without the
at-fork hooks, when that is safe.

``os.fork()`` runs the interpreter's at-fork hooks in every child.  Every
zygote and template has threading's, logging's and random's (the platform
imports them), and in a fresh child each page the hooks touch is a
copy-on-write fault: ~650 KiB un-shared per child (828 KiB private dirty
right after ``os.fork()`` in a process with the zygote's imports, 172 KiB
after a plain ``fork()``), 0.3-0.5 ms per fork -- about as much as the fork
itself.  In a process with one thread they have nothing to do: no other
thread can hold the locks they re-create, and templates and instances
reseed ``random`` themselves.  So we fork with libc's ``fork()`` (called
with the GIL held, so glibc's own atfork handlers still run), as a C
program would.

Only while every hook is one we know: on Python 3.11 the stdlib registers
hooks in threading, logging, random and concurrent.futures.thread, all of
that kind, and the template registers the platform's fork guard
(``instance.guard_forks``), which does nothing in an instance.  Any other hook registered once the zygote started watching (by
an image's pre-import or the function's imports, e.g. a client library that
resets its connections in the child), a non-stdlib module imported before
it started, another Python version, or a thread the function started at
import time: ``os.fork()``, hooks and all.

One ``Forker`` per process tree (``forker``): the zygote watches from its
first line; templates inherit what it saw and decide again, once their
function's code is loaded, at their first fork.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: the C half of signal
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Forker", "default_signals", "forker"]

# Packages the platform imports into every template; none registers a hook.
_PLATFORM_PACKAGES = frozenset({"spanfaas", "msgspec", "typing_extensions", "_distutils_hack", "__main__"})
# The stdlib modules (3.11) whose hooks only redo, in the child, what a
# single-threaded parent leaves done; and the platform's own (instance.guard_forks:
# it marks nothing in a child of the template).
_STDLIB_REGISTRARS = frozenset({"threading", "logging", "random", "concurrent.futures.thread"})
_PLATFORM_REGISTRARS = frozenset({"spanfaas.runtime.instance"})


def _vetted(hook: Callable[[], object]) -> bool:
    module = getattr(hook, "__module__", None)
    if module in _STDLIB_REGISTRARS or module in _PLATFORM_REGISTRARS:  # functions, bound methods (random's seed)
        return True
    futures = sys.modules.get("concurrent.futures.thread")  # registers its shutdown lock's methods
    return futures is not None and getattr(hook, "__self__", None) is getattr(futures, "_global_shutdown_lock", None)


class Forker:
    """Forks children; ``watch()`` before any code that might register a hook is imported."""

    def __init__(self) -> None:
        self._reasons: list[str] = []  # why not fork without the hooks
        self._libc_fork: Any = None
        self._decided_in = 0  # the pid that decided: a forked child decides again
        self.watching = False

    @property
    def lean(self) -> bool:
        """Forking without the at-fork hooks (known once this process forked)."""
        return self._libc_fork is not None and self._decided_in == os.getpid()

    def why_not_lean(self) -> str:
        return "; ".join(self._reasons)

    def watch(self) -> None:
        """Note the at-fork hooks registered from now on; vet the modules imported so far."""
        if self.watching:
            return
        self.watching = True
        if sys.version_info[:2] != (3, 11):
            self._reasons.append(f"the at-fork hooks of Python {sys.version_info[0]}.{sys.version_info[1]} are not vetted")
            return
        for name in list(sys.modules):
            top = name.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in _PLATFORM_PACKAGES and not top.startswith("__editable__"):
                self._reasons.append(f"'{name}' was imported before the template started and may have at-fork hooks")
                break
        register = os.register_at_fork

        def register_at_fork(**hooks: Callable[[], object]) -> None:
            register(**hooks)
            for hook in hooks.values():
                if hook is not None and not _vetted(hook):
                    self._reasons.append(f"an at-fork hook ({getattr(hook, '__qualname__', type(hook).__name__)})")

        setattr(os, "register_at_fork", register_at_fork)

    def _decide(self) -> None:
        """At this process's first fork (a template's: its function's code loaded):
        without the hooks or not, for this process."""
        self._decided_in = os.getpid()
        self._libc_fork = None
        if not self.watching:
            self._reasons.append("at-fork hooks were not watched in this process")
        if threading.active_count() > 1:
            self._reasons.append("the function started threads")
        if self._reasons:
            return
        if isinstance(_LIBC_FORKS, str):
            self._reasons.append(f"libc's fork() is not reachable: {_LIBC_FORKS}")
            return
        self._libc_fork = _LIBC_FORKS[0]

    def bare(self) -> Callable[[], int]:
        """The fork for a loop of forks (a template's batch of instances): libc's
        ``fork()`` itself, called with nothing of ours in between, -1 on failure
        (``fork()`` again then says why, or forks); ``os.fork`` when not lean.

        Between two forks everything the parent writes is a copy-on-write fault
        (each fork write-protects its pages again): this wrapper's frame, the
        attributes it reads, ``os.getpid()``'s int, ctypes keeping ``errno``
        for ``get_errno()``.  Measured in a template forking its instances in
        batches (bench/runtime.py throughput): 28 faults per fork with ``fork()``."""
        if self._decided_in != os.getpid():
            self._decide()
        if self._libc_fork is None or isinstance(_LIBC_FORKS, str):
            return os.fork
        return _LIBC_FORKS[1]

    def fork(self) -> int:
        """Like ``os.fork()``: 0 in the child; OSError (BlockingIOError when out of pids) on failure."""
        if self._decided_in != os.getpid():
            self._decide()
        if self._libc_fork is None:
            return os.fork()
        pid: int = self._libc_fork()
        if pid < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return pid


def _libc_forks() -> tuple[Callable[[], int], Callable[[], int]] | str:
    """libc's ``fork()`` through ctypes, twice: keeping ``errno`` for ``get_errno()``,
    and bare (``Forker.bare``); or why not.  Made once, on import (in the zygote):
    each ``CDLL`` makes a class of its own, ~50 KiB un-shared in every template
    that made its own (``bench/runtime.py --only memory``)."""
    try:
        forks = ctypes.PyDLL(None, use_errno=True).fork, ctypes.PyDLL(None).fork  # PyDLL: the GIL stays held
    except (OSError, AttributeError) as exc:
        return str(exc)
    for fork in forks:
        fork.restype = ctypes.c_int
        fork.argtypes = []
    return forks


_LIBC_FORKS = _libc_forks()

forker = Forker()
"""The process tree's: the zygote calls ``forker.watch()`` first thing."""


def default_signals(*signums: int) -> None:
    """In a fresh child: no wake-up fd, default handlers for ``signums``.

    The C functions, not ``signal.signal``: its enum conversions run enough
    Python to un-share ~70-150 KiB in every child."""
    _signal.set_wakeup_fd(-1)
    for signum in signums:
        _signal.signal(signum, _signal.SIG_DFL)
