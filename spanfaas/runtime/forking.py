"""fork() for the zygote and templates, without Python's at-fork callbacks.

``os.fork()`` runs the callbacks registered with ``os.register_at_fork`` in
the child: ``threading``, ``logging``, ``random`` and
``concurrent.futures.thread`` re-create their locks and state.  Running them
touches (so un-shares, copy-on-write) ~650 KiB of the parent's pages in
every child -- measured here on Python 3.11: 828 KiB private dirty right
after ``os.fork()`` in a process with the zygote's imports, 172 KiB after a
plain ``fork()``.  That is memory per idle function and page faults per
strict invocation.

Those callbacks only repair state that *another thread* could have left
half-done (a held lock) and reseed ``random``; our forking processes are
single-threaded, and the children reseed what needs it themselves
(templates and instances call ``random.seed()``).  So a plain ``fork()`` --
libc's, with the GIL held, so glibc's own atfork handlers still run -- is
used when (a) this process runs only one Python thread and (b) no callback
was registered by anything but those stdlib modules.  Otherwise (user code
started threads, or a library such as redis-py registered its own
callback) it is ``os.fork()`` with every callback, as Python intends.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs: the C half of signal
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["default_signals", "fork", "watch_registrations"]

# Modules whose at-fork callbacks only re-create locks or reseed ``random``.
LOCK_ONLY = frozenset({"threading", "logging", "random", "concurrent.futures.thread"})

_libc_fork = ctypes.PyDLL(None, use_errno=True).fork  # PyDLL: the GIL stays held across the call
_libc_fork.restype = ctypes.c_int
_libc_fork.argtypes = []

_foreign: list[str] = []
"""Modules (other than LOCK_ONLY) that registered at-fork callbacks since ``watch_registrations``."""

_register: Callable[..., None] = os.register_at_fork


def _recording_register(**callbacks: Any) -> None:
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    if caller not in LOCK_ONLY:
        _foreign.append(str(caller))
    _register(**callbacks)


def watch_registrations() -> None:
    """From now on, note who registers at-fork callbacks (call once, early)."""
    os.register_at_fork = _recording_register


def plain_fork_possible() -> bool:
    return not _foreign and threading.active_count() == 1


def fork() -> int:
    """``fork()``: 0 in the child, the child's pid in the parent (OSError on failure)."""
    if not plain_fork_possible():
        return os.fork()
    pid: int = _libc_fork()
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def default_signals(*signums: int) -> None:
    """In a fresh child: no wake-up fd, default handlers for ``signums``.

    The C functions, not ``signal.signal``: its enum conversions run enough
    Python to un-share ~450 KiB in every child."""
    _signal.set_wakeup_fd(-1)
    for signum in signums:
        _signal.signal(signum, _signal.SIG_DFL)
