"""How a template forks its instances: without the at-fork hooks, when that is safe.

``os.fork()`` runs the interpreter's at-fork hooks in every child.  Every
template has threading's, logging's and random's (the platform imports them),
and in a fresh child each page the hooks touch is a copy-on-write fault: they
cost 0.3-0.5 ms per fork, about as much as the fork itself.  In a template
with one thread they have nothing to do: no other thread can hold the locks
they re-create, and the instance reseeds ``random`` itself.  So the template
forks with libc's ``fork()`` (called with the GIL held), as a C program would.

It does so only while every hook is one it knows: on Python 3.11 the stdlib
registers hooks in threading, logging, random and concurrent.futures.thread,
all of that kind.  Any other hook registered once the template started
watching (by the function's imports, e.g. a client library that resets its
connections in the child), a non-stdlib module imported before it started (a
pre-import that may have registered one), another Python version, or a thread
the function started at import time: the template uses ``os.fork()``, hooks
and all.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

# Packages the platform imports into every template; none registers a hook.
_PLATFORM_PACKAGES = frozenset({"spanfaas", "msgspec", "typing_extensions", "_distutils_hack", "__main__"})
# The stdlib modules (3.11) whose hooks only redo, in the child, what a
# single-threaded parent leaves done.
_STDLIB_REGISTRARS = frozenset({"threading", "logging", "random", "concurrent.futures.thread"})


def _vetted(hook: Callable[[], object]) -> bool:
    if getattr(hook, "__module__", None) in _STDLIB_REGISTRARS:  # functions, bound methods (random's seed)
        return True
    futures = sys.modules.get("concurrent.futures.thread")  # registers its shutdown lock's methods
    return futures is not None and getattr(hook, "__self__", None) is getattr(futures, "_global_shutdown_lock", None)


class Forker:
    """Forks instances; ``watch()`` before the function's code is imported."""

    def __init__(self) -> None:
        self._reasons: list[str] = []  # why not fork without the hooks
        self._libc_fork: Any = None
        self._decided = False

    @property
    def lean(self) -> bool:
        """Forking without the at-fork hooks (known once the first instance forked)."""
        return self._libc_fork is not None

    def why_not_lean(self) -> str:
        return "; ".join(self._reasons)

    def watch(self) -> None:
        """Note the at-fork hooks registered from now on; vet the modules imported so far."""
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
        """At the first fork, the function's code loaded: without the hooks or not, for good."""
        self._decided = True
        if threading.active_count() > 1:
            self._reasons.append("the function started threads")
        if self._reasons:
            return
        try:
            fork = ctypes.PyDLL(None, use_errno=True).fork  # PyDLL: the GIL stays held
        except (OSError, AttributeError) as exc:
            self._reasons.append(f"libc's fork() is not reachable: {exc}")
            return
        fork.restype = ctypes.c_int
        fork.argtypes = []
        self._libc_fork = fork

    def fork(self) -> int:
        """Like ``os.fork()``: 0 in the child; OSError (BlockingIOError when out of pids) on failure."""
        if not self._decided:
            self._decide()
        if self._libc_fork is None:
            return os.fork()
        pid: int = self._libc_fork()
        if pid < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return pid
