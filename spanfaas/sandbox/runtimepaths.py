"""A function's Python at fixed paths: the interpreter, venv, spanfaas and image packages.

With its code at ``/var/task`` (``fixedpaths.py``), a sandboxed function still
learnt the host's layout from its Python: ``sys.path``, ``sys.prefix``, and the
``__file__``, ``__cached__``, ``__path__`` and ``__spec__`` of every module the
zygote imported named the interpreter's install (``/root/.pyenv/...``), the
venv, the checkout spanfaas runs from and an image's packages under the data
dir.  In the function's mount namespace the fitter binds each of those trees
(``TREES``) at a fixed path inside the ``/var`` tmpfs that holds ``/var/task``:

=====================  ==========================================
``/var/lang``          the interpreter's prefix (``sys.base_prefix``)
``/var/venv``          the venv (``sys.prefix``), when there is one
``/var/runtime``       a dir holding only the ``spanfaas`` package
``/var/packages/<n>``  the image's package dirs, in ``sys.path`` order
=====================  ==========================================

The names must also be what the function *reads*, and rewriting them in every
template would un-share each module's dict, spec and loader: ~1 MiB per idle
function.  So a sandboxed zygote rewrites them once, in its own objects
(``rewrite``), before it forks any template, and templates inherit the fixed
names for free.  The zygote and its fitters still run in the host's mount
namespace, where the fixed paths do not exist: a path hook (``_Either``) finds
what they import lazily at the host path while a fixed one is missing.  A
template whose fitter could not bind the trees (a failed mount) puts the host
names back (``rewrite(..., back=True)``): it pays the un-shared pages, and
only it.

The same pass renames every code object's ``co_filename`` in place
(``_rename_code``: tracebacks, ``inspect``, ``warnings`` and ``linecache`` read
it), the strings modules worked out at import (``logging._srcfile``...),
``sys.argv``, ``sys.orig_argv`` and ``/proc/self/cmdline`` (``_rename_cmdline``).
Left as they were (docs/runtime.md, "Where a function finds its Python";
``test_hostpaths_seen.py`` asserts them exactly): ``/proc/self/maps`` and
``/proc/self/exe`` (the files the zygote mapped, named by the path they were
opened at), a bind's *root* field in ``/proc/self/mountinfo`` (the tree's path in
its file system, as for every bind mount), and what the trees' files say
(``sysconfig``'s build-time variables, a venv's ``pyvenv.cfg``).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, Final

import spanfaas

__all__ = ["LANG", "PACKAGES", "RUNTIME", "VENV", "Trees", "covers", "placed", "rewrite", "trees"]

LANG: Final = "/var/lang"
VENV: Final = "/var/venv"
RUNTIME: Final = "/var/runtime"
PACKAGES: Final = "/var/packages"

Trees = tuple[tuple[str, str], ...]
"""(host dir, fixed dir) pairs: the binds a function's mount namespace gets."""

TREES: Trees = ()
"""Set in a sandboxed zygote by ``rewrite``: its templates' fitters bind these, and a
template whose fitter did not puts the host names back."""
_replaced: list[dict[str, Any]] = []
"""The importer caches ``rewrite`` replaced (see ``_rekey_finders``)."""
_ENTRIES: tuple[tuple[str, str], ...] = ()
"""``sys.path`` entries that are no bound tree (the dir holding spanfaas) -> fixed."""


def trees(image_paths: Sequence[str]) -> tuple[Trees, tuple[tuple[str, str], ...]]:
    """The trees this interpreter's modules come from, each with its fixed dir, and
    the ``sys.path`` entries that hold a bound tree (spanfaas's parent, when it is
    a checkout's root, not in a tree) with theirs.  ``image_paths``: the image's
    package dirs (not spanfaas's parent)."""
    package = os.path.dirname(os.path.abspath(spanfaas.__file__))
    out: list[tuple[str, str]] = [(sys.base_prefix, LANG)]
    if os.path.realpath(sys.prefix) != os.path.realpath(sys.base_prefix):
        out.append((sys.prefix, VENV))
    out.append((package, f"{RUNTIME}/spanfaas"))
    out += [(path, f"{PACKAGES}/{i}") for i, path in enumerate(image_paths)]
    seen = tuple((os.path.normpath(h), f) for h, f in out if os.path.isdir(h))
    parent = os.path.dirname(package)  # a checkout's root; an install's site-packages is in a tree already
    return seen, (((parent, RUNTIME),) if _translate(parent, seen) is None else ())


def covers(found: Trees, path: str) -> bool:
    """``path`` (as given or resolved) lies in one of ``found``'s host trees."""
    return any(_translate(p, found) is not None for p in {os.path.normpath(path), os.path.realpath(path)})


def _translate(path: str, table: Sequence[tuple[str, str]]) -> str | None:
    """``path`` under the longest matching ``table`` prefix, moved to its pair; None if none."""
    best: tuple[str, str] | None = None
    for src, dst in table:
        if (path == src or path.startswith(src + "/")) and (best is None or len(src) > len(best[0])):
            best = (src, dst)
    return None if best is None else best[1] + path[len(best[0]) :]


def rewrite(found: Trees, entries: Sequence[tuple[str, str]], *, back: bool = False) -> int:
    """Name ``found``'s trees by their fixed dirs (``back``: by their host dirs again) in
    ``sys.path``, ``sys``'s prefixes, ``PYTHONPATH`` and every imported module's file,
    cached file, search path, spec and loader.  Returns how many values changed.

    Call in a sandboxed zygote, after its imports and before it forks; ``back``, in a
    template whose fitter did not bind the trees."""
    global TREES, _ENTRIES
    table = [(f, h) for h, f in found] if back else list(found)
    whole = table + ([(f, h) for h, f in entries] if back else list(entries))
    changed = 0

    def move(value: Any, exact: bool = False) -> Any:
        nonlocal changed
        if not isinstance(value, str):
            return value
        new = next((d for s, d in whole if s == value), None) if exact else _translate(value, table)
        if new is None and exact:
            new = _translate(value, table)
        if new is None:
            return value
        changed += 1
        return new

    def move_list(paths: Any, exact: bool = False) -> None:
        if isinstance(paths, list):
            paths[:] = [move(p, exact) for p in paths]

    move_list(sys.path, exact=True)
    for attr in ("prefix", "exec_prefix", "base_prefix", "base_exec_prefix", "executable", "_base_executable", "_stdlib_dir", "_home"):
        if isinstance(getattr(sys, attr, None), str):
            setattr(sys, attr, move(getattr(sys, attr)))
    move_list(sys.argv)  # (the zygote's file, from ``-m``)
    move_list(getattr(sys, "orig_argv", None))
    site = sys.modules.get("site")
    if site is not None:
        move_list(getattr(site, "PREFIXES", None))
        for attr in ("USER_BASE", "USER_SITE"):  # the runtime's home's: worked out again from HOME when asked
            setattr(site, attr, None)
    move_list(getattr(getattr(sys.modules.get("builtins"), "license", None), "_Printer__filenames", None))
    if "PYTHONPATH" in os.environ:
        os.environ["PYTHONPATH"] = os.pathsep.join(move(p, exact=True) for p in os.environ["PYTHONPATH"].split(os.pathsep))
    for module in list(sys.modules.values()):
        attrs = getattr(module, "__dict__", None)
        if not isinstance(attrs, dict):
            continue
        ours = str(attrs.get("__name__", "")).partition(".")[0] == "spanfaas"  # (its constants name the fixed dirs)
        for key, value in list(attrs.items()):
            # __file__, __cached__, and what a module worked out from them or from sys at
            # its import: ``logging._srcfile`` (the file findCaller skips, by its code's
            # name), ``sysconfig._PROJECT_BASE``...
            if type(value) is str and value[:1] == "/" and (not ours or key in ("__file__", "__cached__")):
                attrs[key] = move(value)
        move_list(attrs.get("__path__"))
        spec = attrs.get("__spec__")
        if spec is not None:
            if isinstance(getattr(spec, "origin", None), str):
                spec.origin = move(spec.origin)
            if isinstance(getattr(spec, "_cached", None), str):
                spec._cached = move(spec._cached)
            move_list(getattr(spec, "submodule_search_locations", None))
        for loader in {id(x): x for x in (attrs.get("__loader__"), getattr(spec, "loader", None)) if x is not None}.values():
            if isinstance(getattr(loader, "path", None), str):
                loader.path = move(loader.path)
    _rekey_finders(table, whole, back)
    changed += _rename_code(table)
    if not back:
        _rename_cmdline()
    if back:
        TREES, _ENTRIES = (), ()
        sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "_spanfaas_either", False)]
    else:
        TREES, _ENTRIES = tuple(found), tuple(entries)
        # Last: where a fixed dir exists (a function's namespace) the FileFinder hook takes it.
        sys.path_hooks.append(_either_hook(found, entries))
    return changed


def _rename_code(table: Sequence[tuple[str, str]]) -> int:
    """Every code object's ``co_filename`` under ``table``'s names: what tracebacks,
    ``inspect`` and ``warnings`` print, and ``linecache`` reads the source from (at the
    fixed path, in a function's namespace).  In place (``_imp._fix_co_filename``, which
    the importer uses to rename a moved ``.pyc``'s code, nested code objects with it), so
    the frames already running (the zygote's, under every template's) are renamed too,
    and no code object is copied.  Returns how many code objects (and their nested ones)
    were renamed.

    Reaches the code of every function the gc tracks (in a template, whose frozen
    objects it does not list, of those reachable from ``sys.modules``) and of the
    running frames; code that is no function's (a module's or class's body, run once
    and dropped) is gone anyway."""
    import _imp
    import gc

    fix: Callable[[types.CodeType, str], None] = _imp._fix_co_filename  # type: ignore[attr-defined]

    function = types.FunctionType
    codes = {id(obj.__code__): obj.__code__ for obj in gc.get_objects() if type(obj) is function}
    if gc.get_freeze_count():  # (a template: the gc lists the zygote's objects no more)
        seen: set[int] = set()
        for module in list(sys.modules.values()):
            attrs = getattr(module, "__dict__", None)
            if isinstance(attrs, dict):
                for value in list(attrs.values()):
                    _collect_code(value, codes, seen)
    frame: types.FrameType | None = sys._getframe()
    while frame is not None:
        codes[id(frame.f_code)] = frame.f_code
        frame = frame.f_back
    names: dict[str, str | None] = {}
    changed = 0
    for code in codes.values():
        old = code.co_filename
        if old not in names:
            names[old] = _translate(old, table)
        new = names[old]
        if new is not None:
            names.setdefault(new, None)  # (nested code renamed with its parent: nothing more to do)
            fix(code, new)
            changed += 1
    return changed


def _collect_code(value: Any, codes: dict[int, types.CodeType], seen: set[int]) -> None:
    """The code of ``value``: a function, a method's, a property's, or a class's (its
    methods and nested classes)."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, types.FunctionType):
        codes[id(value.__code__)] = value.__code__
    elif isinstance(value, property):
        for part in (value.fget, value.fset, value.fdel):
            _collect_code(part, codes, seen)
    elif isinstance(value, type) and id(value) not in seen:
        seen.add(id(value))
        for member in list(vars(value).values()):
            _collect_code(member, codes, seen)


def _rename_cmdline() -> bool:
    """``/proc/self/cmdline`` -- the kernel reads the arguments the interpreter was
    started with (its host path first) from our own memory -- written over with
    ``sys.orig_argv`` as renamed, once, here: every template and instance inherits it.
    In place, since pointing the kernel at a buffer of ours (``PR_SET_MM``) needs
    ``CAP_SYS_RESOURCE``, which a container's root may lack: so only where the new
    names fit in the old ones' room (the rest is zeros, which ``ps`` shows as
    spaces); else left as it was.  True if written."""
    import ctypes

    argv = getattr(sys, "orig_argv", None) or sys.argv
    data = b"".join(os.fsencode(x) + b"\0" for x in argv)
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[48 - 3]), int(fields[49 - 3])  # arg_start, arg_end (proc(5); the state is field 3)
    except (OSError, IndexError, ValueError):
        return False
    size = end - start
    if not 0 < len(data) <= size:
        return False
    old = ctypes.string_at(start, size)
    if old.count(b"\0") != len(argv) or not old.endswith(b"\0"):
        return False  # not the arguments we know
    ctypes.memmove(start, data + bytes(size - len(data)), size)
    return True


def _rekey_finders(table: Sequence[tuple[str, str]], whole: Sequence[tuple[str, str]], back: bool) -> None:
    """``sys.path_importer_cache`` under the new names.  Each dir's finder keeps the
    listing the zygote made (a copy of it, named by the fixed dir, for a function's
    namespace, where the bind shows the same dir and modification time): a template
    that imports lists no dir again, and so allocates nothing for it."""
    old = sys.path_importer_cache
    # A new dict, the old one kept: its table, freed, would leave a hole in the zygote's
    # heap that every template's first allocations would land in (un-sharing its pages).
    sys.path_importer_cache = {}
    _replaced.append(old)
    for key, finder in old.items():
        if back:
            if isinstance(finder, _Either):
                host = finder._finders.get(finder.host)
                if host is not None:
                    sys.path_importer_cache[finder.host] = host
            elif not any(key == f or key.startswith(f + "/") for f, _ in whole):
                sys.path_importer_cache[key] = finder
            continue
        new = next((d for s, d in whole if s == key), None) or _translate(key, table)
        if new is None:
            sys.path_importer_cache[key] = finder
        elif finder is None:
            sys.path_importer_cache[new] = None  # (not a dir: the stdlib's zip, absent)
        elif hasattr(finder, "_path_cache"):  # a FileFinder
            named: Any = object.__new__(type(finder))
            named.__dict__.update(vars(finder))  # (its listing shared)
            named.path = new
            sys.path_importer_cache[new] = _Either(new, key, _file_finder_hook(), {key: finder, new: named})


def placed(report: bool) -> None:
    """In a template, with its fitter's word on whether it bound ``TREES``: if it did
    not, the host names back (un-sharing what they are written into: only here).
    (Call it only when ``report`` is false: a function a template runs for the first
    time un-shares the page of its code.)"""
    if not report and TREES:
        rewrite(TREES, _ENTRIES, back=True)


class _Either:
    """The finder of a fixed ``sys.path`` or ``__path__`` entry: the entry itself where
    it is mounted (a function's namespace), else its host dir (the zygote, a fitter)."""

    def __init__(self, fixed: str, host: str, make: Callable[[str], Any], finders: dict[str, Any] | None = None) -> None:
        self.fixed, self.host, self._make = fixed, host, make
        self._finders: dict[str, Any] = finders or {}

    def _finder(self) -> Any:
        where = self.fixed if os.path.isdir(self.fixed) else self.host
        if where not in self._finders:
            try:
                self._finders[where] = self._make(where)
            except ImportError:  # not a dir (the stdlib's zip, absent): nothing found there
                self._finders[where] = None
        return self._finders[where]

    def find_spec(self, name: str, target: Any = None) -> Any:
        finder = self._finder()
        return None if finder is None else finder.find_spec(name, target)

    def invalidate_caches(self) -> None:
        for finder in self._finders.values():
            if finder is not None:
                finder.invalidate_caches()


def _file_finder_hook() -> Callable[[str], Any]:
    return next(h for h in sys.path_hooks if getattr(h, "__name__", "") == "path_hook_for_FileFinder")


def _either_hook(found: Trees, entries: Sequence[tuple[str, str]]) -> Callable[[str], _Either]:
    make = _file_finder_hook()
    back = [(f, h) for h, f in found] + [(f, h) for h, f in entries]

    def hook(entry: str) -> _Either:
        host = next((h for f, h in back if f == entry), None) or _translate(entry, back)
        if host is None:
            raise ImportError("not a fixed path")  # the next hook's
        return _Either(entry, host, make)

    hook._spanfaas_either = True  # type: ignore[attr-defined]
    return hook
