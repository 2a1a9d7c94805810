"""A function's template: its code imported once, its sandbox applied once.

Runs in a process forked from the zygote (pid 2 of the function's pid
namespace when namespaces are on, under its reaper, ``sandbox/reaper.py``).  It forks instances on the runtime's
request, hands the runtime each instance's socket (SCM_RIGHTS), reaps them,
reports their exit status and removes their scratch directories.  Nothing
here runs on the request path: instances talk to the runtime directly.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stub; see _instance_main)
import ctypes
import errno
import fcntl
import gc
import importlib
import inspect
import os
import random
import resource
import select
import signal
import socket
import sys
import time
import traceback
import types
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import msgspec

from spanfaas.model import MANIFEST_NAME, ErrorInfo, Protection, single_file_manifest
from spanfaas.runtime import fitter, forking, loader
from spanfaas.runtime import instance as inst
from spanfaas.runtime import protocol as p
from spanfaas.runtime.context import function_logger
from spanfaas.runtime.supervise import supervise
from spanfaas.sandbox import _libc

if TYPE_CHECKING:
    from spanfaas.sandbox import PreparedLayer, SandboxPlan

_decoder = msgspec.msgpack.Decoder(p.TemplateRequest)
WARM_PASSES = 100
"""Runs of the request path in a template before its instances inherit it: CPython 3.11
quickens a function on its 8th call and specializes an instruction after ~50 runs of it."""
PR_SET_CHILD_SUBREAPER = 36

# Modules the stdlib imports lazily on first use; after Landlock they may no
# longer be readable, so pay for them before locking down.
LAZY_IMPORTS = (
    "encodings.idna",
    "encodings.utf_8",
    "encodings.latin_1",
    "encodings.ascii",
    "encodings.utf_16",
    "encodings.unicode_escape",
    "encodings.raw_unicode_escape",
    "stringprep",
    "unicodedata",
    "_strptime",
    "locale",
    "traceback",
    "linecache",
    "tokenize",
)


_LAZY_DONE = False  # set in the zygote: its templates inherit the modules

_SCOPED: Protection | None = None
"""Set in the zygote (``warm_sandbox``) where Landlock scopes signals (ABI 6+): the
signal-scope Protection of each template whose Landlock layer is in force."""

_SCRATCH_LANDLOCK: Protection | None = None
"""Set in the zygote (``warm_sandbox``): the scratch-isolation Protection of each template
whose Landlock layer is in force (made there, shared, like ``_SCOPED``)."""


def warm_sandbox() -> None:
    """In the zygote, once: where Landlock scopes signals, the signal-scope Protection
    every such template reports (``lock_down``), so that none of them asks the ABI
    (``TEST_ABI_ENV`` included: the zygote has its runtime's) or formats the text."""
    global _SCOPED, _SCRATCH_LANDLOCK
    from spanfaas.sandbox import landlock, seccomp

    abi = landlock.abi_version()
    _SCOPED = seccomp.signal_protection(abi, True, True, False) if abi >= 6 else None
    _SCRATCH_LANDLOCK = landlock.scratch_protection(True)


def _preimport_lazy() -> None:
    for name in LAZY_IMPORTS:
        if name in sys.modules:
            continue  # the zygote's: importlib's own check would un-share ~120 KiB in every template
        try:
            importlib.import_module(name)
        except ImportError:
            continue


class _Misfit(Exception):
    """The code loaded but does not fit its manifest (no such handler, a generator
    function).  The message says the fix, and the platform's check that found it is
    no frame of the user's: the error goes without a traceback, under the type
    (``kind``) it names."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _defined(module: types.ModuleType) -> list[str]:
    """The public functions ``module`` defines itself (not those it imports): the
    handlers a manifest naming another one may have meant."""
    name = module.__name__
    return sorted(
        n for n, v in vars(module).items() if not n.startswith("_") and isinstance(v, types.FunctionType) and v.__module__ == name
    )


def _no_handler(module: str, function: str, bundle: str, defined: list[str] | None = None) -> str:
    """Why the function's module has no handler, and the fix: in the manifest, or, deployed
    as a single file (its manifest generated: its user has none), in that file.  With the
    functions the module does define (``defined``), the one meant is named."""
    try:
        with open(os.path.join(bundle, MANIFEST_NAME), encoding="utf-8") as f:
            single = f.read() == single_file_manifest(module)
    except (OSError, ValueError):
        single = False
    if single:
        return (f"{module}.py has no function '{function}': define def {function}(event, context) in {module}.py, "
                f"or deploy a directory with a spanfaas.toml that names your function (handler = \"{module}:<function>\")")  # fmt: skip
    if not defined:
        return f"module '{module}' has no callable '{function}'; set handler = \"{module}:<function>\" in spanfaas.toml"
    file = module.replace(".", "/") + ".py"
    listed = ", ".join(f"{n}()" for n in defined[:8]) + (", ..." if len(defined) > 8 else "")
    target = defined[0] if len(defined) == 1 else "<function>"
    return f"module '{module}' has no callable '{function}'; {file} defines {listed}: set handler = \"{module}:{target}\" in spanfaas.toml"


def _generator_kind(fn: Any) -> str | None:
    """"a generator" or "an async generator" when ``fn`` is one's function, else None
    (by its code's flags: inspect's Python would un-share pages of a fresh template)."""
    code = getattr(fn, "__code__", None)
    flags = code.co_flags if type(fn) is types.FunctionType and code is not None else 0
    if flags & inspect.CO_ASYNC_GENERATOR or (not flags and inspect.isasyncgenfunction(fn)):
        return "an async generator"
    if flags & inspect.CO_GENERATOR or (not flags and inspect.isgeneratorfunction(fn)):
        return "a generator"
    return None


def _misfit_signature(fn: Any, module: str, function: str) -> str | None:
    """Why ``fn`` cannot be called as ``fn(event, context)``, with the fix; None when it can,
    or when it is no plain function (a callable object, a C function: called and seen).
    Said at deploy: a ``def handler(event)`` (the habit of other platforms) otherwise
    deployed fine, and each call failed with a TypeError under a frame of the platform's."""
    code = getattr(fn, "__code__", None)
    if type(fn) is not types.FunctionType or code is None or code.co_flags & inspect.CO_VARARGS:
        return None
    names = code.co_varnames[: code.co_argcount]
    required = code.co_argcount - len(fn.__defaults__ or ())
    keywords = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    needed_keywords = [k for k in keywords if k not in (fn.__kwdefaults__ or {})]
    if len(names) < 2:
        takes = f"takes 1 argument ({names[0]})" if names else "takes no arguments"
    elif required > 2:
        takes = f"needs {required} arguments ({', '.join(names[:required])})"
    elif needed_keywords:
        takes = f"needs the keyword-only argument{'s' if len(needed_keywords) > 1 else ''} {', '.join(needed_keywords)}"
    else:
        return None
    return f"{function}() in {module.replace('.', '/')}.py {takes}: spanfaas calls {function}(event, context), so write def {function}(event, context)"


def _plan_value(plan: Any, key: str, default: Any = None) -> Any:
    if plan is None:
        return default
    if isinstance(plan, dict):
        return plan.get(key, default)
    return getattr(plan, key, default)


class Template:
    def __init__(self, req: p.SpawnTemplate, chan: socket.socket, protections: list[Protection], lifeline: int = -1) -> None:
        self.req = req
        self.chan = chan
        self.lifeline = lifeline  # our end of the namespace's reaper's pipe: its read ends when we do
        self.protections = protections
        self.children: dict[int, int] = {}  # pid -> seq
        self.seq = 0
        self.forker = forking.forker  # watching since the zygote started
        self.forker.watch()  # (a no-op then; a template started on its own watches from here)
        self._bare_fork: Callable[[], int] | None = None  # (decided at the first fork: Forker.bare)
        self.streams: tuple[TextIO, TextIO] | None = None
        self.layer: PreparedLayer | None = None  # the instances' Landlock layer
        self.settled = False
        self._queued: select.poll | None = None  # is a control message waiting?
        self.runner: inst.Runner | None = None
        self.landlock = False
        self.uid: int | None = None  # the fitter's verdict: the function's uid can reach its code
        self.plan: SandboxPlan | None = None  # and the plan to apply, with that uid
        self.ruleset = -1  # and our Landlock ruleset, built
        # Where the code and the scratch dirs are in our namespace: their host paths,
        # or the fixed ones the fitter placed them at (sandbox/fixedpaths.py).
        self.code_dir = req.bundle_path
        self.scratch_dir = req.scratch_dir
        self.base_data = 0
        self.one_shot = False  # strict: an instance serves one call (set with the rest before the first fork)
        self.concurrent = False
        self.data_limit: tuple[int, int] | None = None  # an instance's RLIMIT_DATA
        self.plan_for_child: _ChildPlan | None = None  # what every instance reads of the template (_prepare_forking)
        self.scratch_paths: dict[int, str] = {}  # seq -> its instance's scratch dir (_scratch)
        self.guarded: tuple[int, ...] = ()  # pids instances may not signal (seccomp), where Landlock cannot scope signals
        self.instance_guard: Any = None  # and each instance's own signal guard (seccomp.InstanceGuard) there
        self.sweeping = False  # strict without Landlock: the scratch tmpfs is swept at each reap (sweep)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.wake_r, self.wake_w = rfd, wfd
        # Orphans of instances come to us: as their subreaper (not inherited by
        # the instances we fork), or as pid 1 of a pid namespace without a reaper.
        reaping = _orphan_reaping()
        self.reaper = reaping.active
        self.protections.append(reaping)

    # -- start-up ------------------------------------------------------------

    def fit(self, reports: list[int]) -> None:
        """Read the fitters' reports (``fitter.py``): what they set up for us.

        Raises when the template must not start (it is not in its cgroup)."""
        bound = False
        for fd in reports:
            report, fds = fitter.read_report(fd)
            if report.error:
                for extra in fds:
                    os.close(extra)
                raise OSError(report.error)
            if fds:
                self.ruleset = fds[0]
            names = {x.name for x in report.protections}
            self.protections = [x for x in self.protections if x.name not in names] + report.protections
            if report.function:
                self.uid = report.uid
                self.plan = report.plan
                self.code_dir = report.code_dir or self.code_dir
                self.scratch_dir = report.scratch_dir or self.scratch_dir
                bound = report.runtime_paths
        if not bound and (paths := sys.modules.get("spanfaas.sandbox.runtimepaths")) is not None:
            paths.placed(bound)  # the host's names of our Python again, where the zygote gave them fixed ones

    def lock_down(self) -> None:
        """Apply the process-wide part of the sandbox (inherited by instances);
        the fitter did the rest."""
        plan = self.req.sandbox
        if plan is None:
            return
        from spanfaas import sandbox

        plan_obj = self.plan
        if plan_obj is None:
            raise OSError("no sandbox fitter reported the function's part; see the runtime's log")
        if not _LAZY_DONE:
            _preimport_lazy()
        uid = plan_obj.uid
        if uid is not None:
            sandbox.drop_privileges(uid)
            self.protections.append(Protection("uid", True, f"running as uid {uid}"))
        lp = next(x for x in self.protections if x.name == "landlock")  # the fitter's ruleset, or why none
        if self.ruleset >= 0:
            self.protections.remove(lp)
            lp = sandbox.landlock_enforce(self.ruleset, lp)
            self.ruleset = -1
            self.protections.append(lp)
        self.landlock = lp.active
        if self.landlock and _SCRATCH_LANDLOCK is not None:
            self.protections.append(_SCRATCH_LANDLOCK)
        else:  # (without Landlock: the strict template sweeps its scratch tmpfs, see sweep)
            strict = self.req.isolation == "strict"
            self.protections.append(sandbox.landlock.scratch_protection(self.landlock, strict))
            self.sweeping = strict and not self.landlock
        # Instances share our uid: where their Landlock layers cannot scope signals
        # (ABI < 6: Ubuntu 22.04/24.04, Debian 12), seccomp refuses the calls that would
        # signal pid 1 or our parents (and kill(-1)), in us and every process we fork;
        # those that would signal us, in our instances (``_guard_self``: not in the
        # import, whose os.kill(os.getpid()) or abort() must end us as without it).
        # Where Landlock scopes signals, what the zygote learnt (``warm_sandbox``): no
        # Python here that the zygote did not run, since each function a template runs
        # first un-shares the page of its code object, and each string it builds is its own.
        if self.landlock and _SCOPED is not None:
            self.protections.append(sandbox.seccomp_deny(plan_obj.allow_exec, unix_sockets=plan_obj.network == "host"))
            self.protections.append(_SCOPED)
            return
        from spanfaas.sandbox import landlock, seccomp

        abi = landlock.abi_version()
        self.guarded = () if self.landlock and abi >= 6 else _guarded_pids()
        sc = sandbox.seccomp_deny(plan_obj.allow_exec, unix_sockets=plan_obj.network == "host", guarded=self.guarded)
        self.protections.append(sc)
        # A function allowed subprocesses must stop them by their pid (subprocess.run's timeout,
        # Popen.kill): no instance guard, its siblings stay reachable by pid (docs/runtime.md, "Signals").
        siblings = not plan_obj.allow_exec
        self.protections.append(seccomp.signal_protection(abi, self.landlock, sc.active, bool(self.guarded), siblings))
        if sc.active and self.guarded and siblings:  # (prebuilt in the zygote: sandbox.prepare)
            self.instance_guard = seccomp.instance_guard(_libc.ARCH)

    def load(self) -> None:
        req = self.req
        random.seed()  # forked without the at-fork reseed (forking.py): no two templates share a sequence
        os.environ.update(req.env)
        os.chdir(self.code_dir)
        sys.path.insert(0, self.code_dir)
        inst.show_paths_from(self.code_dir)
        started = time.perf_counter()
        module = loader.load(req.module, self.code_dir)
        handler = getattr(module, req.function, None)
        if handler is None or not callable(handler):
            raise _Misfit("AttributeError", _no_handler(req.module, req.function, self.code_dir, _defined(module)))
        if (kind := _generator_kind(handler)) is not None:
            raise _Misfit("TypeError", f"{req.function}() in {req.module}.py is {kind} function (it has yield): each call would return "
                            "a generator, which is no result; return the values instead of yielding them, e.g. a list")  # fmt: skip
        if (misfit := _misfit_signature(handler, req.module, req.function)) is not None:
            raise _Misfit("TypeError", misfit)
        self.runner = inst.Runner(handler, req.name, max_result=req.max_result)
        self.import_ms = (time.perf_counter() - started) * 1000
        self.base_data = _vm_data()
        function_logger(req.name)  # named once, here, for every instance
        gc.freeze()  # the collector never touches (and un-shares) template objects

    def guard_self(self) -> None:
        """Once the function is imported, where Landlock cannot scope signals: the
        signal guard for us (our pid, our group) and our threads, in our instances
        (and us: after the import nothing of ours signals itself)."""
        if self.guarded and not _guard_self():
            self.protections = [x for x in self.protections if x.name != "signal-scope"]
            self.protections.append(Protection("signal-scope", False, "the seccomp signal guard for the template was "
                                               "refused: its instances can signal it (the same uid)"))  # fmt: skip

    # -- instances -------------------------------------------------------------
    #
    # What happens between two forks is paid again for every instance.  A fork
    # write-protects the template's pages, so each page the template writes
    # afterwards is a copy-on-write fault, and so is each page a fresh child
    # writes (a refcount, an object allocated into a shared pool): the path
    # from fork() to the child's hello stays short, and what can be prepared
    # once is prepared before the first fork.

    def _prepare_forking(self) -> tuple[TextIO, TextIO]:
        """Once, before the first fork: what every instance needs."""
        self.streams = inst.open_streams()
        inst.guard_forks(os.getpid())  # what a handler forks never answers for its instance
        req = self.req
        self.one_shot = req.isolation == "strict"
        self.concurrent = req.isolation == "reuse" and req.concurrency > 1
        if req.instance_memory:
            limit = self.base_data + req.instance_memory
            self.data_limit = (limit, limit)
        # Each instance sets both to its scratch dir: with the keys already there,
        # that replaces two values instead of growing the environ dict.
        os.environ["TMPDIR"] = os.environ["HOME"] = self.scratch_dir
        if self.landlock:
            try:  # we make and remove dirs in it and list nothing; an instance may watch nothing in it (_scratch)
                os.chmod(self.scratch_dir, 0o300)
            except OSError:
                pass
            from spanfaas import sandbox

            ro_paths = self.plan.ro_paths if self.plan is not None else _plan_value(self.req.sandbox, "ro_paths", ())
            self.layer = sandbox.PreparedLayer(tuple(ro_paths))
        _rng.gauss_next = None  # (random.seed() clears it; the template calls no gauss() from here on)
        assert self.runner is not None
        self.plan_for_child = (self.runner, self.layer, self.data_limit, self.one_shot, self.concurrent, req.concurrency,
                               sys.modules.get("numpy.random"), self.instance_guard, self.sweeping)  # fmt: skip
        return self.streams

    def _settle(self) -> None:
        """Once, after the first instances are forked (off the cold start's path):
        what makes the next ones cheaper."""
        assert self.runner is not None
        self.settled = True
        # The request path here too: what it builds lazily on first use (ABC
        # caches, first-call state) is then inherited, not built again (and
        # faulted in) by every instance that is not warmed.  Run often enough
        # for the interpreter to quicken and specialize its code: else each
        # instance writes its warm-up counters into the code objects, a
        # copy-on-write fault per page of them (~10 faults an instance).
        for _ in range(WARM_PASSES):
            self.runner.warm()
        if self.one_shot:
            inst.rehearse(self.runner, WARM_PASSES)
        gc.freeze()  # what the template made since load() too: children's collections skip it
        _trim_heap()

    def _scratch(self, seq: int) -> str:
        """A new instance's scratch dir: ``i<seq>-<random>``.  The random part is what keeps
        one call from watching (inotify, which Landlock does not govern) the dir of the
        call forked after it, together with a scratch root it may not read (mode 0300,
        ``_prepare_forking``): it learnt the names of the files a concurrent call made."""
        path = f"{self.scratch_dir}/i{seq}-{os.urandom(6).hex()}"
        self.scratch_paths[seq] = path
        return path

    def fork_instances(self, n: int, warm: bool = True) -> None:
        """Fork ``n`` instances; ``warm``: each runs its request path once before
        it says hello (worth it when it will wait for a call; a call already
        waiting would wait longer).

        Back to back: what each needs (socketpair, scratch dir, Landlock
        ruleset) is made first and the runtime is told after, so between two
        forks the template writes a few pages, not ~100.  Out of pids, the
        rest are forked one at a time, each announced at once (calls finish
        and free pids only once the runtime knows the instances forked)."""
        assert self.runner is not None
        if n <= 0:
            return
        streams = self.streams or self._prepare_forking()
        batch: list[_Prepared] = []
        # What each reads (see _become_instance), listed here: a comprehension is code of its
        # own, and each code object a template runs first is a page it un-shares.
        children: list[_ForChild] = []
        for _ in range(n):
            try:
                prep = self._make_instance()
                batch.append(prep)
                children.append(prep.child)
            except OSError as exc:
                p.send_msg(self.chan, p.ForkFailed(self.seq, f"{type(exc).__name__}: {exc}"))
        inherited = self._inherited(batch)
        plan = self.plan_for_child
        assert plan is not None
        # Between two forks the loop runs as little as it can, on locals: each page it
        # writes is a copy-on-write fault again after every fork (28 per fork through
        # Forker.fork() and the dict, 19 here; bench/runtime.py's throughput).
        fork = self._bare_fork
        if fork is None:
            fork = self._bare_fork = self.forker.bare()
        forked: list[int | OSError] = []
        append = forked.append
        try:
            for child in children:
                try:
                    pid = fork()
                    if pid < 0:  # why (and a retry, which may fork)
                        pid = self.forker.fork()
                except BlockingIOError:
                    break
                except OSError as exc:
                    append(exc)
                    continue
                if pid == 0:
                    _become_instance(plan, inherited, child, streams, warm)
                append(pid)
        finally:  # before any reap: a reap kills children it does not know
            for prep, result in zip(batch, forked):
                if type(result) is int:
                    self.children[result] = prep.seq
        for prep, result in zip(batch, forked):
            self._announce(prep, result)
        rest = batch[len(forked) :]
        for i, prep in enumerate(rest):
            child = prep.child
            try:
                pid = self._fork_retrying()
            except OSError as exc:
                self._announce(prep, exc)
                continue
            if pid == 0:  # (the ones announced closed theirs: their numbers may be free, or reused)
                _become_instance(plan, self._inherited(rest[i:]), child, streams, warm)
            self.children[pid] = prep.seq
            self._announce(prep, pid)
        if not self.settled:
            self._settle()

    def _inherited(self, batch: list[_Prepared]) -> tuple[tuple[int, int], ...]:
        """The descriptors an instance of ``batch`` inherits and must close (all
        but its own end, ruleset and logs), as runs ``[lo, hi)`` of numbers: the
        child closes each run with one ``close_range()`` (``_close_inherited``).

        A batch's descriptors are mostly consecutive numbers; one by one, a child
        of a batch of 64 made ~200 close() calls, and each fd's int object it read
        was a refcount written, a page copied (~7 per instance)."""
        fds = [self.chan.fileno(), self.wake_r, self.wake_w]
        if self.lifeline >= 0:  # (held by an instance, it would keep the namespace alive without us)
            fds.append(self.lifeline)
        for prep in batch:
            fds += (prep.ours_fd, prep.theirs_fd, prep.logs)
            if prep.ruleset >= 0:
                fds.append(prep.ruleset)
        runs: list[tuple[int, int]] = []  # (inline: a function of its own would be one more code object first run here)
        for fd in sorted(set(fds)):
            if runs and runs[-1][1] == fd:
                runs[-1] = (runs[-1][0], fd + 1)
            else:
                runs.append((fd, fd + 1))
        return tuple(runs)

    def _announce(self, prep: _Prepared, result: int | OSError) -> None:
        """After the fork (or its failure): close our copies, tell the runtime (and
        hand it the instance's socket and log capture)."""
        prep.close_ruleset()
        prep.theirs.close()
        try:
            if isinstance(result, OSError):
                remove_tree(prep.scratch)
                p.send_msg(self.chan, p.ForkFailed(prep.seq, f"{type(result).__name__}: {result}"))
            else:
                p.send_msg(self.chan, p.InstanceForked(prep.seq), fds=[prep.ours.fileno(), prep.logs])
        finally:
            prep.ours.close()
            os.close(prep.logs)

    def _make_instance(self) -> _Prepared:
        """What one instance needs before its fork: its scratch dir too (made here, one
        after the other: made by the instances, each mkdir contended with the others'
        and with our rmdirs on the one parent dir, ~0.2 ms of CPU each under load)."""
        self.seq += 1
        prep = _Prepared(self.seq, self._scratch(self.seq))
        try:
            os.mkdir(prep.scratch, 0o700)
            if self.layer is not None:  # its Landlock layer is built here, where ctypes is warm
                prep.ruleset = self.layer.ruleset((prep.scratch,))
        except OSError:
            prep.close_ruleset()
            prep.ours.close()
            prep.theirs.close()
            os.close(prep.logs)
            remove_tree(prep.scratch)
            raise
        capture = _new_capture(_Capture)  # (Capture.on, inlined: one function less run per fork)
        capture.fd = prep.logs
        prep.child = (prep.theirs_fd, prep.ruleset, prep.logs, prep.scratch_b, prep.env, prep.theirs, prep.hello,
                      prep.readable, capture)  # fmt: skip
        return prep

    def _fork_retrying(self, attempts: int = 20) -> int:
        """fork(), riding out a short pid shortage while a finished instance's
        leftovers are reaped (each retry reaps first)."""
        for attempt in range(attempts):
            try:
                return self.forker.fork()
            except BlockingIOError:
                if attempt == attempts - 1:
                    raise
                self.reap()
                time.sleep(0.005)
        raise AssertionError("unreachable")

    def reap(self) -> None:
        reaped = False
        swept: list[tuple[int, int]] | None = [] if self.sweeping else None
        while True:
            exited = reap_one(self.children)
            if exited is None:
                break
            pid, status = exited
            seq = self.children.pop(pid, None)
            reaped = True  # an orphan too: its own children are ours now, and outlive it
            if seq is None:
                continue  # an orphan re-parented to us (their subreaper)
            scratch = self.scratch_paths.pop(seq, None)
            if scratch is not None:
                remove_tree(scratch)
            if swept is not None:
                swept.append((seq, status))  # told once the scratch tmpfs is swept, below
                continue
            p.send_msg(self.chan, p.InstanceExited(seq, status))
        if reaped and self.reaper:
            self._kill_orphans()
        if swept:
            self.sweep()
            for seq, status in swept:
                p.send_msg(self.chan, p.InstanceExited(seq, status))

    def sweep(self) -> None:
        """Without Landlock (strict): remove from the scratch root all but the live instances' dirs.

        An instance may then write anywhere in the scratch tmpfs (it is one uid with us),
        and what a call left beside its own dir (``../left``, a dir named as an instance's)
        outlived it, for the next call to read.  Run once an instance is reaped, its group
        and the orphans it left killed, before its exit is told: the runtime starts no call
        after a strict call's answer before that (``Pool._after_sweeps``), so no call that
        starts after it sees any of it.  The dirs of the instances forked ahead of it, which it may have written
        in too, are emptied while no call runs in them: an instance locks its dir (``flock``)
        as its call starts (``_empty_own``), and a dir we cannot lock is a call's, whose
        files are its own (what a call leaves in the dir of a call beside it lasts until that
        one ends)."""
        live = {os.path.basename(path) for path in self.scratch_paths.values()}
        for path in self.scratch_paths.values():
            try:
                fd = os.open(path, _DIR_FLAGS)
            except OSError:
                continue
            try:
                _flock(fd, _LOCK_EX | _LOCK_NB)
            except OSError:
                os.close(fd)  # its call runs
                continue
            try:
                _remove_below(fd)  # (closes it: unlocked)
            except OSError:
                pass
        try:
            fd = _open_dir(self.scratch_dir, None)  # (a call may have made it unreadable)
        except OSError:
            return
        try:
            with _scan(fd) as it:
                left = [(e.name, e.is_dir(follow_symlinks=False)) for e in it if e.name not in live or not e.is_dir(follow_symlinks=False)]
            for name, is_dir in left:
                try:
                    if is_dir:
                        _remove_tree_at(fd, name)
                    else:
                        os.unlink(name, dir_fd=fd)
                except OSError:
                    pass  # (gone, or it cannot go: as remove_tree)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _kill_orphans(self) -> None:
        """Kill what left an instance's group and outlived it (``setsid()``, its
        parent gone): re-parented to us, pid 1 of the namespace or its subreaper,
        it is our child but no instance.  One read of our children list; a scan
        of /proc (a read per process) if the kernel lacks it."""
        me = os.getpid()
        try:
            with open("/proc/thread-self/children", "rb") as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            pids = [pid for pid in _pids() if _ppid(pid) == me]
        for pid in pids:
            if pid != me and pid not in self.children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def retire(self, seq: int) -> None:
        for pid, s in self.children.items():
            if s == seq:
                os.kill(pid, signal.SIGKILL)
                return

    # -- loop --------------------------------------------------------------------

    def loop(self) -> None:
        supervise(self.chan, _decoder, (self.wake_r, self.wake_w), self._on_message, self.reap)

    def _on_message(self, msg: Any, fds: list[int], batch: dict[bool, int] | None = None) -> bool:
        for fd in fds:
            os.close(fd)
        match msg:
            case p.Fork(count=n, warm=warm) if batch is not None:
                batch[warm] = batch.get(warm, 0) + n
            case p.Fork(count=n, warm=warm):
                self._fork_all({warm: n})
            case p.Retire(seq=seq):
                self.retire(seq)
        return False

    def _fork_all(self, counts: dict[bool, int]) -> None:
        """Fork what this Fork asks for and what the Fork messages queued behind
        it ask for, as one batch per kind (under load the runtime asks for
        instances one at a time, faster than they can be forked)."""
        if self._queued is None:
            self._queued = select.poll()
            self._queued.register(self.chan.fileno(), select.POLLIN)
        while self._queued.poll(0):
            try:
                got = p.recv_msg(self.chan, _decoder)
            except OSError:
                break  # the loop sees it again
            if got is None:
                break  # EOF: the loop sees it again
            self._on_message(*got, counts)
        for warm in (False, True):  # calls are waiting for the unwarmed ones
            if counts.get(warm):
                self.fork_instances(counts[warm], warm)

    def shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        remove_tree(self.scratch_dir)


# -- the instance ---------------------------------------------------------------
#
# From fork() to its call, an instance runs code no template runs (that runs it
# once per instance): never quickened nor specialized, each attribute it reads
# (``module.name``, ``obj.name``) takes the generic lookup, which fills an entry
# of the interpreter's type cache, writing the cache, the name's refcount and
# the refcount of the name it evicts (three pages copied, ~8 µs).  So that code
# reads locals: what it needs is packed into tuples in the template
# (``_ChildPlan``, ``_Prepared.for_child``) and the functions it calls are
# module globals here (a lookup in this module's dict, which writes nothing).

_ChildPlan = tuple[inst.Runner, Any, "tuple[int, int] | None", bool, bool, int, Any, Any, bool]
"""What every instance of a template reads of it (``Template._prepare_forking``): its runner,
Landlock layer (or None), RLIMIT_DATA (or None), strict?, concurrent?, concurrency, numpy.random (or None),
its own signal guard (or None: ``seccomp.InstanceGuard``), strict without Landlock? (``Template.sweep``)."""

_closerange = os.closerange
_flock = fcntl.flock
_LOCK_EX, _LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB
_getpid = os.getpid
_dup2 = os.dup2
_chdir = os.chdir
_setpgid = os.setpgid
_setrlimit = resource.setrlimit
_RLIMIT_DATA = resource.RLIMIT_DATA
_set_wakeup_fd = _signal.set_wakeup_fd
_set_signal = _signal.signal
_SIGCHLD = _signal.SIGCHLD
_SIG_DFL = _signal.SIG_DFL
_sys_vars: dict[str, Any] = sys.__dict__  # (sys.stdout = ... is a generic setattr: a type cache entry)
_serve_one = inst.serve_one
_serve = inst.serve
_serve_concurrent = inst.serve_concurrent
_frame_reader = inst.frame_reader
_print_exc = traceback.print_exc
_exit_now = os._exit
_Capture = inst.Capture
_new_capture = object.__new__


def _become_instance(plan: _ChildPlan, inherited: tuple[tuple[int, int], ...], child: _ForChild, streams: tuple[TextIO, TextIO], warm: bool) -> NoReturn:
    code = 70
    try:
        # An instance holding another's socket would hide that one's exit (or its logs, read them).
        keep, ruleset, logs = child[0], child[1], child[2]
        for lo, hi in inherited:
            while lo < hi:  # up to the next of ours in the run, if any
                upto = hi
                if lo <= keep < upto:
                    upto = keep
                if lo <= ruleset < upto:
                    upto = ruleset
                if lo <= logs < upto:
                    upto = logs
                _closerange(lo, upto)
                lo = upto + 1
        _instance_main(plan, child, streams, warm)
        code = 0
    except BaseException:  # the child must never return into the template loop
        _print_exc()
    finally:
        _exit_now(code)


def _instance_main(plan: _ChildPlan, child: _ForChild, streams: tuple[TextIO, TextIO], warm: bool) -> None:
    """The child, from fork() to the end of its invocations.

    Each object it touches is a page it copies (module globals, attributes,
    functions and their code all carry refcounts): what an instance needs
    was computed in the template (``_ChildPlan``, ``_Prepared``), and it takes
    the shortest path to its call, reading locals (see above)."""
    runner, layer, data_limit, one_shot, concurrent, concurrency, np_random, guard, sweeping = plan
    _, ruleset, logs, scratch, env, sock, hello, readable, capture = child
    _set_wakeup_fd(-1)
    # (signal.signal would convert the template's handler to an enum, and
    # fail doing it: ~40 copy-on-write faults.)
    _set_signal(_SIGCHLD, _SIG_DFL)
    _setpgid(0, 0)  # the instance leads a group: what it forks dies with it
    if guard is not None:  # Landlock cannot scope signals: it signals only itself and its group
        guard.install(_getpid())
    if layer is not None:  # read-write: only its own scratch dir; its own signal scope
        layer.close()
        layer.enforce(ruleset)
    _chdir(scratch)  # (made by the template: _make_instance)
    _scratch_env(scratch, env)
    if data_limit:
        _setrlimit(_RLIMIT_DATA, data_limit)
    _random_seed(_rng, None)  # random.seed(), its C part (the template cleared gauss_next)
    if np_random is not None:  # imported by the function: its state was copied by fork
        np_random.seed()
    _dup2(logs, 1)  # (capture: made in the template, on this fd)
    _dup2(logs, 2)
    _sys_vars["stdout"], _sys_vars["stderr"] = streams
    if one_shot:
        if warm:
            runner.warm()
            capture.take()
        sock.send(hello)
        _serve_one(sock, runner, capture, readable, _empty_own if sweeping else None)
        return
    reader = None if concurrent else _frame_reader(sock)
    if warm:
        runner.warm(reader)
        capture.take()
    sock.send(hello)
    if reader is None:
        _serve_concurrent(sock, runner, concurrency, capture)
    else:
        _serve(sock, runner, capture=capture, reader=reader)
    sock.close()


_ForChild = tuple[int, int, int, bytes, tuple[bytes, bytes], socket.socket, bytes, select.poll, inst.Capture]
"""``_Prepared.for_child``: its socket's fd, ruleset and logs fd, scratch dir, environment
entries, socket, hello, the poll it waits on, its capture."""


class _Prepared:
    """What one instance needs before its fork: its seq and scratch dir, both
    ends of its socketpair, its log capture (a memfd the runtime keeps too: what
    a call printed outlives an instance that crashed), its Landlock ruleset (or -1)."""

    __slots__ = ("seq", "scratch", "scratch_b", "env", "ours", "theirs", "ours_fd", "theirs_fd", "logs", "ruleset", "hello", "readable", "child")
    child: _ForChild  # what the instance reads of it (set by Template._make_instance, its ruleset made)

    def __init__(self, seq: int, scratch: str) -> None:
        self.seq = seq
        self.scratch = scratch
        self.scratch_b = os.fsencode(scratch)
        self.env = (b"TMPDIR=" + self.scratch_b, b"HOME=" + self.scratch_b)  # (see _scratch_env)
        self.logs = os.memfd_create("spanfaas-logs", os.MFD_CLOEXEC)
        try:
            self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:
            os.close(self.logs)
            raise
        self.ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        # Blocking, whatever socket.setdefaulttimeout() the function's module set at import:
        # an instance waits for its call as long as it takes.
        self.theirs.setblocking(True)
        self.ours_fd, self.theirs_fd = self.ours.fileno(), self.theirs.fileno()
        self.ruleset = -1
        self.hello = b"".join(p.encode(p.Hello(seq)))
        self.readable = select.poll()  # the instance waits for its request here (see instance.read_one)
        self.readable.register(self.theirs_fd, select.POLLIN)

    def close_ruleset(self) -> None:
        if self.ruleset >= 0:
            os.close(self.ruleset)
            self.ruleset = -1


_environ: dict[bytes, bytes] = getattr(os.environ, "_data")  # noqa: B009 - os.environ's bytes, which putenv() does not update


_putenv: Any = ctypes.CDLL(None).putenv  # (made in the zygote, shared by every template)


def _scratch_env(path: bytes, entries: tuple[bytes, bytes]) -> None:
    """TMPDIR and HOME: the instance's scratch dir (``os.environ[...] = ...``
    runs ~10 Python functions, each a page or two copied in a fresh child).

    ``entries``: ``b"TMPDIR=<path>"`` and ``b"HOME=<path>"``, made before the fork,
    which putenv(3) makes part of the environment as they are (kept here for the
    life of the process).  setenv() (``os.putenv``) would allocate copies and add
    them to glibc's tree of the values it has set: in a fresh child, ~20 pages of
    the template's heap copied, ~40 µs."""
    global _env_kept
    _env_kept = entries
    for entry in entries:
        if _putenv(entry) != 0:
            raise OSError(ctypes.get_errno(), "putenv failed")
    _environ[b"TMPDIR"] = _environ[b"HOME"] = path


_env_kept: tuple[bytes, ...] = ()


_random_seed: Any = getattr(random.Random.__mro__[1], "seed")  # noqa: B009 - _random.Random.seed: from os.urandom, in C
"""An instance reseeds ``random`` with this, ``random.seed()`` without its Python wrapper,
and numpy's too, if imported (not imported: it seeds itself on import; importing it here cost ~13 ms)."""
_rng: Any = getattr(random, "_inst")  # noqa: B009 - the module's functions' generator


def reap_one(groups: Container[int]) -> tuple[int, int] | None:
    """Reap one exited child: its pid and wait status; None when none has exited.

    A child in ``groups`` led a process group (an instance: what it forked dies with
    it): the group is killed first, while the child is a zombie whose pid no other
    process can take.  (Killed after the reap, the number could be another's group by then.)"""
    try:
        found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # exited, left unreaped
    except ChildProcessError:
        return None
    if found is None:
        return None
    pid = found.si_pid
    if pid in groups:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        _, status = os.waitpid(pid, 0)  # (it has exited: at once)
    except ChildProcessError:
        return None
    return pid, status


def _orphan_reaping() -> Protection:
    """Whether processes an instance leaves behind with ``setsid()`` come to us to be killed.

    A protection of its own, so the runtime's info (each pool's) says why when they
    don't (a print here would go to the import capture, unseen)."""
    name = "orphan-reaping"
    if os.getpid() == 1:
        return Protection(name, True, "the template is pid 1 of the function's pid namespace")
    try:  # (the zygote's prctl, ready: a CDLL made here un-shared ~0.1 MiB of every template)
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        return Protection(name, False, f"prctl(PR_SET_CHILD_SUBREAPER) failed ({exc.strerror or exc}): "
                          "processes an instance leaves behind with setsid() may outlive it")  # fmt: skip
    return Protection(name, True, "the template is its instances' subreaper (PR_SET_CHILD_SUBREAPER)")


def _empty_own() -> None:
    """Without Landlock, as a strict call starts: empty the instance's own dir (its cwd),
    where a call that ended before it (forked after it) may have left files.  One listing
    of an empty dir, most times; a dir made unreadable is made readable again.  The dir
    stays locked (``flock``) for the rest of the instance's life: the template's sweep
    empties only the dirs of instances whose call has not started (``Template.sweep``),
    and one that is emptying it now has it locked until it is done."""
    try:
        fd = _open_dir(".", None)
    except OSError:
        return
    try:
        _flock(fd, _LOCK_EX)  # (held: the descriptor stays open, close-on-exec)
        _remove_below(os.dup(fd))
    except OSError:
        pass


def _remove_tree_at(parent: int, name: str) -> None:
    """``remove_tree`` of the dir ``name`` in the dir ``parent`` (never following a link)."""
    try:
        os.rmdir(name, dir_fd=parent)
        return
    except OSError:
        pass
    _remove_below(_open_dir(name, parent))
    os.rmdir(name, dir_fd=parent)


def remove_tree(path: str) -> None:
    """Remove a directory tree, never following links, best effort (shutil would add
    ~30 memory mappings, bz2/lzma/zlib, to every template).

    What an instance leaves is hostile input: a tree 5000 deep (recursion here
    raised RecursionError and took the template down, a path past PATH_MAX), a
    dir of ~100k entries left as the memory cgroup is full (listed whole, the list
    ran the template out of memory), a dir made unreadable (``chmod 0``).  So the
    walk is a loop on one descriptor, down into the first dir it cannot remove and
    back up with ``..``, removing entries as the listing streams them."""
    try:
        os.rmdir(path)  # most instances leave their scratch dir empty: one syscall
        return
    except OSError:
        pass
    try:
        fd = _open_dir(path, None)  # (the scratch root is write-only: _prepare_forking)
    except OSError:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        return
    _remove_below(fd)
    try:
        os.rmdir(path)
    except OSError:
        pass


def _remove_below(fd: int) -> None:
    """Remove all the dir ``fd`` holds, best effort (see ``remove_tree``); closes ``fd``."""
    depth = 0
    try:
        while True:
            busy = _empty_out(fd)
            if busy is not None:  # a dir with something in it: go down into it
                below = _open_dir(busy, fd)
                os.close(fd)
                fd, depth = below, depth + 1
            elif depth == 0:
                break
            else:  # emptied: up, where its (now empty) dir is removed on the next pass
                above = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, depth = above, depth - 1
    except OSError:
        pass  # (an entry that cannot go: it stays, as it would have)
    finally:
        os.close(fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, parent: int | None) -> int:
    """Open the subdir ``name`` of ``parent`` (None: the path ``name``), made readable first if need be."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent)  # ours (same uid): it was a dir a moment ago
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _scan(fd: int) -> os._ScandirIterator[str]:
    """The listing of the dir ``fd``, made readable first if a call took that away (ours: same uid)."""
    try:
        return os.scandir(fd)
    except PermissionError:
        os.fchmod(fd, 0o700)
        return os.scandir(fd)


def _empty_out(fd: int) -> str | None:
    """Remove what the dir ``fd`` holds, streaming its listing: files, links and
    empty dirs.  The name of the first dir that is not empty, or None: emptied."""
    with _scan(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                try:
                    os.rmdir(entry.name, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        return entry.name
                    raise
            else:
                os.unlink(entry.name, dir_fd=fd)
    return None


def _trim_heap() -> None:
    """Return the malloc heap's free pages to the kernel: each resident page is a
    page table entry that every fork copies and every instance's exit drops
    (import leaves ~0.7 MiB of them)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _guarded_pids() -> tuple[int, ...]:
    """What nothing of the function may signal where Landlock cannot keep it from it: pid 1,
    our parent and its parent, as seen from here (in a pid namespace: only 1, the reaper;
    the zygote and the runtime are outside it, pid 0)."""
    pids = {1}
    if (parent := os.getppid()) > 0:
        pids.add(parent)
        if (grandparent := _ppid(parent)) > 0:
            pids.add(grandparent)
    return tuple(sorted(pids))


def _guard_self() -> bool:
    """Before the first instance: the signal guard for us (our pid, our group) and our threads
    (started by the function's import; a thread's tid signals its whole process).  Threads
    they start later are not covered.  (One listdir; the program for a template alone is
    prebuilt in the zygote: ``sandbox.prepare``.)"""
    from spanfaas.sandbox import seccomp

    try:
        tids = {int(t) for t in os.listdir("/proc/self/task")}
    except (OSError, ValueError):
        tids = set()
    return seccomp.signal_guard(tuple(sorted(tids | {os.getpid()})))


def _pids() -> list[int]:
    return [int(x) for x in os.listdir("/proc") if x.isdigit()]


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _vm_data() -> int:
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 8192)
        finally:
            os.close(fd)
        at = status.index(b"VmData:") + 7
        return int(status[at : status.index(b"kB", at)]) * 1024
    except (OSError, ValueError):
        return 0


def run(
    req: p.SpawnTemplate, chan_fd: int, protections: list[Protection], *, reports: list[int] = [], lifeline: int = -1  # noqa: B006 - read only
) -> NoReturn:
    """Entry point in the template process; never returns.

    ``reports``: pipes on which fitters report (``fitter.py``) once the
    template is in its cgroup and its namespaces are set up; no user code
    is imported before.  ``lifeline``: the write end of the pipe its pid
    namespace's reaper reads (``sandbox/reaper.py``), kept for its whole life."""
    chan = socket.socket(fileno=chan_fd)
    chan.setblocking(True)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    capture = os.memfd_create("spanfaas-import", os.MFD_CLOEXEC)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    tpl = Template(req, chan, protections, lifeline)
    code = 0
    try:
        sandboxing = True
        try:
            tpl.fit(reports)
            tpl.lock_down()
            p.send_msg(chan, p.Importing(), fds=[capture])  # if the code exits or crashes now, the runtime tells why
            sandboxing = False
            tpl.load()
            if tpl.guarded:  # (not a call where there is nothing to guard: see lock_down)
                tpl.guard_self()
        except BaseException as exc:  # report any import-time failure to the runtime
            out = os.pread(capture, 65536, 0).decode("utf-8", "replace")
            err = ErrorInfo(
                kind="error",
                type=exc.kind if isinstance(exc, _Misfit) else type(exc).__name__,
                message=str(exc),
                traceback=("" if isinstance(exc, _Misfit) else inst.user_traceback(exc)) + (f"\n--- output ---\n{out}" if out else ""),
            )
            p.send_msg(chan, p.TemplateFailed(err, sandbox=sandboxing))
            code = 1
            _exit(code)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)  # (its instances would inherit it: a descriptor no handler needs)
        os.close(capture)
        p.send_msg(chan, p.TemplateReady(import_ms=tpl.import_ms, protections=tpl.protections, sweeps=tpl.sweeping))
        tpl.fork_instances(req.initial)
        tpl.loop()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        tpl.shutdown()
    _exit(code)


def _exit(code: int) -> NoReturn:
    os._exit(code)
