"""Packing the code that runs after a fork onto few pages of the zygote's.

CPython 3.11 writes to each code object it runs: its refcount (each frame
holds one) and, until the code is specialized, its warm-up and adaptive
counters.  A code object is ~0.3-2 KiB, and the ones a template runs from its
fork to "ready" (``template.run``, the sandbox's lock-down, the loader...) or
the zygote runs for each deploy (``Zygote.spawn``, ``_fork_shell``, the
protocol...) were made at import, among everything else their modules made:
~90 of them, on ~80 pages.  Each page a template writes is copied into it;
each page the zygote writes after forking a template leaves the template the
old copy, shared with no one -- one page per template for every page the
zygote touches per deploy.

``pack`` gives each function named in ``ZYGOTE`` and ``TEMPLATE`` a copy of
its code (``code.replace()``: the same code, un-quickened), made one after the
other at the end of the zygote's warm-up, after ``heap.fill_holes`` and
``heap.fill_malloc_holes`` (so they land side by side on fresh pages, not in
holes), and keeps the originals (freed, they would leave holes for templates
to fill).  Measured (bench/zygote_pages.py-style, median of 8 sandboxed
templates): private pages per template 499-507 -> 488/496; on 1,000 idle
functions (sandbox, default manifest / prefork = 0, with the malloc holes
filled too) main 2,044/2,029, 2,042/2,006, 2,032/1,980, 1,999/2,022 MiB ->
1,871/1,870, 1,840/1,841 (docs/runtime.md, "Memory").

The lists are the functions a ``sys.setprofile`` hook saw run (a template:
from its fork to its first idle loop; the zygote: per deploy, with a spare);
a name that no longer resolves is skipped (``tests/unit/runtime/test_packing.py``
checks that each one does).  The frozen stdlib modules' code (``posixpath``,
``importlib._bootstrap``...) is static data of libpython, spread over its pages:
copied too.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable

__all__ = ["TEMPLATE", "ZYGOTE", "pack", "resolve"]

ZYGOTE = (
    "spanfaas.runtime.supervise:supervise",
    "spanfaas.runtime.supervise:_ignore",
    "spanfaas.runtime.zygote:Zygote._on_message",
    "spanfaas.runtime.zygote:Zygote._handle",
    "spanfaas.runtime.zygote:Zygote.prepare_spare",
    "spanfaas.runtime.zygote:Zygote.spawn",
    "spanfaas.runtime.zygote:Zygote._hand_to_spare",
    "spanfaas.runtime.zygote:Zygote._fork_shell",
    "spanfaas.runtime.zygote:Zygote._spawned",
    "spanfaas.runtime.zygote:Zygote.reap",
    "spanfaas.runtime.zygote:Spare.__init__",
    "spanfaas.runtime.fitter:channel",
    "spanfaas.runtime.fitter:order",
    "posixpath:join",
    "posixpath:_get_sep",
    "spanfaas.runtime.forking:Forker.fork",
    "spanfaas.runtime.forking:Forker._decide",
    "threading:active_count",
    "ctypes:CDLL.__init__",
    "ctypes:CDLL.__getattr__",
    "ctypes:CDLL.__getitem__",
    "genericpath:exists",
    "spanfaas.sandbox.namespaces:NamespacesForNextChildren.__init__",
    "spanfaas.sandbox.namespaces:NamespacesForNextChildren.enter",
    "spanfaas.sandbox.namespaces:NamespacesForNextChildren.restore",
    "spanfaas.sandbox._libc:unshare",
    "spanfaas.sandbox._libc:setns",
    "spanfaas.sandbox.reaper:lifeline",
    "spanfaas.runtime.protocol:recv_msg",
    # run by both (last of the zygote's, first of the templates')
    "spanfaas.runtime.protocol:send_msg",
    "socket:socketpair",
    "socket:send_fds",
    "socket:recv_fds",
    "socket:socket.__init__",
    "socket:socket.detach",
    "socket:socket.close",
    "socket:socket._real_close",
    "spanfaas.sandbox.namespaces:NamespacesForNextChildren.forget",
)
"""What the zygote runs for each deploy (and the shared tail, run by templates too)."""

TEMPLATE = (
    "spanfaas.runtime.zygote:Zygote._leave_zygote",
    "spanfaas.runtime.zygote:Zygote._close_zygote_fds",
    "spanfaas.runtime.zygote:_wait_as_spare",
    "spanfaas.runtime.protocol:recv_msg_lean",
    "spanfaas.runtime.forking:default_signals",
    "spanfaas.runtime.forking:Forker.watch",
    "spanfaas.runtime.template:run",
    "spanfaas.runtime.template:Template.__init__",
    "spanfaas.runtime.template:_orphan_reaping",
    "spanfaas.runtime.template:Template.fit",
    "spanfaas.runtime.fitter:read_report",
    "spanfaas.runtime.template:Template.lock_down",
    "spanfaas.sandbox.limits:drop_privileges",
    "spanfaas.sandbox.plan:SandboxPlan.__post_init__",
    "spanfaas.sandbox.landlock:landlock_enforce",
    "spanfaas.sandbox.seccomp:seccomp_deny",
    "spanfaas.sandbox._libc:no_new_privs",
    "spanfaas.sandbox._libc:prctl",
    "spanfaas.sandbox._libc:syscall",
    "spanfaas.runtime.template:Template.load",
    "random:Random.seed",
    "spanfaas.runtime.instance:show_paths_from",
    "spanfaas.runtime.loader:load",
    "genericpath:isfile",
    "genericpath:isdir",
    "importlib._bootstrap:ModuleSpec.__init__",
    "importlib._bootstrap:_handle_fromlist",
    "importlib._bootstrap_external:FileLoader.__init__",
    "abc:ABCMeta.__instancecheck__",
    "abc:ABCMeta.__subclasscheck__",
    "_collections_abc:MutableMapping.update",
    "spanfaas.runtime.template:_generator_kind",
    "spanfaas.runtime.instance:Runner.__init__",
    "spanfaas.runtime.instance:_is_coroutine_function",
    "spanfaas.runtime.template:_vm_data",
    "spanfaas.runtime.context:function_logger",
    "spanfaas.runtime.template:Template.fork_instances",
)
"""What a template runs from its fork (or its spare's) to its first idle loop."""

_kept: list[types.CodeType] = []


def resolve(name: str) -> types.FunctionType | None:
    """``module:qualname`` -> the function, if its module is imported and it is one."""
    module, _, qualname = name.partition(":")
    obj: object = sys.modules.get(module)
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == module:
        obj = main  # the zygote runs as ``python -m spanfaas.runtime.zygote``
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, types.FunctionType) else None


def _copy(code: types.CodeType) -> types.CodeType:
    """A fresh copy of ``code`` and of the code it makes functions of (comprehensions, closures)."""
    consts = tuple(_copy(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_consts=consts)


def pack(names: Iterable[str]) -> int:
    """Give each function named (``module:qualname``) a copy of its code, made now, in
    this order; returns how many.  Call it single-threaded, after the heap's holes are filled."""
    done = 0
    for name in names:
        fn = resolve(name)
        if fn is None:
            continue
        _kept.append(fn.__code__)
        fn.__code__ = _copy(fn.__code__)
        done += 1
    return done
