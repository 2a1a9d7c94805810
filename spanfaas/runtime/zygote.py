"""The master zygote: one lean, single-threaded process that pre-imports the
platform and common stdlib modules and forks function templates from itself,
so idle functions share those pages copy-on-write.

Started by the runtime as ``python -m spanfaas.runtime.zygote FD MODULES``
with a SOCK_SEQPACKET channel on FD.  For each ``SpawnTemplate`` it forks the
template as pid 2 of fresh namespaces (``NamespacesForNextChildren``), under
a reaper of one page as pid 1 (``sandbox/reaper.py``), and, beside it, a throwaway *fitter* (``fitter.py``) that joins it to the
function's cgroup and sets the namespaces up; the template itself only
applies what a process can only do to itself (uid, Landlock, seccomp), so it
un-shares few pages.  The zygote is a child subreaper; it reports its
templates' exits.

A *spare* (``PrepareSpare``) is the same shell forked ahead of any deploy,
its fitter done: namespaces and the cgroup join -- the slow part of a
sandboxed cold start -- are ready when a ``SpawnTemplate`` naming it
arrives (the spare is reported ready only once its fitter has exited: a
function's fitter that joined its mount namespace earlier would resolve
``/proc`` for the Landlock ruleset before the shell's own ``/proc`` was
mounted over it, and the function would be refused ``/proc/self/...``).
Before it exits, that fitter forks a successor that stays in the spare's
namespaces and the function's memory cgroup, waiting (``fitter.wait_for_function``);
the zygote sends it the function's part (hostname, fs view, code and
scratch tmpfs: the copy of the code is charged to the function, with no
cgroup join on the cold start) and the spare goes on as that function's
template.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from spanfaas.model import Protection
from spanfaas.runtime import fitter, forking, heap, packing
from spanfaas.runtime import protocol as p
from spanfaas.runtime import template
from spanfaas.runtime.supervise import supervise
from spanfaas.sandbox import reaper
from spanfaas.sandbox._libc import CLONE_NEWPID
from spanfaas.sandbox.namespaces import NamespacesForNextChildren

SIGCHLD, SIGINT, SIGTERM = int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_decoder = msgspec.msgpack.Decoder(p.ZygoteRequest)

_reaper_program = -1
"""The reaper's memfd (``sandbox/reaper.py``), made by ``_warm_sandbox``: -1 without one."""



def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


class Spare:
    """A prepared sandbox shell: pid 2 of fresh namespaces (under their reaper), in its cgroup,
    blocked on ``sock`` until a ``SpawnTemplate`` names it; beside it, its fitter's successor,
    in its namespaces and memory cgroup, blocked on ``fitter`` (``fitter.wait_for_function``)."""

    def __init__(self, key: str, pid: int, sock: socket.socket, unshared: int, fitter: socket.socket | None = None) -> None:
        self.key = key
        self.pid = pid
        self.sock = sock
        self.unshared = unshared  # the clone flags its namespaces were made with
        self.fitter = fitter

    def close(self) -> None:
        self.sock.close()
        if self.fitter is not None:
            self.fitter.close()


class Zygote:
    def __init__(self, chan: socket.socket) -> None:
        self.chan = chan
        self.templates: dict[int, str] = {}
        self.spares: dict[str, Spare] = {}
        self.fitting: dict[int, Spare] = {}
        """Spares whose fitter still runs, by the fitter's pid: reported ready when it exits."""
        self.reapers: dict[int, int] = {}
        """The reaper (pid 1 of its namespace) of each sandbox shell, by the shell's pid."""
        self.reaping: dict[int, int] = {}
        """The same, by the reaper's pid."""
        self.held: dict[int, p.TemplateExited] = {}
        """A shell's exit, by its reaper's pid: told once the reaper is reaped (``reap``)."""
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def spawn(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        spare = self.spares.pop(req.spare, None) if req.spare else None
        if spare is not None:
            return self._hand_to_spare(spare, req, chan_fd)
        if req.sandbox is None and not req.cgroup:
            return self._spawn_direct(req, chan_fd)

        def run(protections: list[Protection], reports: list[int], lifeline: int) -> None:
            template.run(req, chan_fd, protections, reports=reports, lifeline=lifeline)

        inner, _, _ = self._fork_shell(req.sandbox, req.cgroup, run, req=req)
        os.close(chan_fd)
        if inner > 0:
            self.templates[inner] = req.key
        self._spawned(req, inner)

    def prepare_spare(self, req: p.PrepareSpare) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            to_fitter, fitters = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # (its successor's)
        except OSError:
            ours.close()
            theirs.close()
            raise

        def wait(protections: list[Protection], reports: list[int], lifeline: int) -> None:
            ours.close()  # our ends must not keep the spare (or its fitter) alive after we are gone
            to_fitter.close()
            fitters.close()
            _wait_as_spare(theirs, protections, reports, lifeline)

        try:
            inner, unshared, fitter_pid = self._fork_shell(
                {"namespaces": True, "network": "none"}, req.cgroup, wait, req=None, successor=fitters.fileno(), private=(ours, to_fitter)
            )
        except OSError:
            ours.close()
            to_fitter.close()
            raise
        finally:
            theirs.close()
            fitters.close()
        if inner > 0:
            self.templates[inner] = req.key
            spare = Spare(req.key, inner, ours, unshared, to_fitter)
            if fitter_pid > 0:
                self.fitting[fitter_pid] = spare  # ready when its fitter exits (``reap``)
                return
            self.spares[req.key] = spare  # no fitter: the spare reads EOF and fails its deploy
        else:
            ours.close()
            to_fitter.close()
        p.send_msg(self.chan, p.SpareReady(req.key, inner))

    def _hand_to_spare(self, spare: Spare, req: p.SpawnTemplate, chan_fd: int) -> None:
        report_r, report_w = fitter.channel()
        order = fitter.FitRequest(sandbox=req.sandbox, bundle_path=req.bundle_path, scratch_dir=req.scratch_dir, name=req.name)
        if spare.fitter is None or not fitter.order(spare.fitter, order, report_w):
            # Its waiting fitter is gone (not forked, or dead): one that enters its
            # namespaces and joins the function's memory cgroup (10-13 ms on cgroup v1).
            try:
                pid = forking.forker.fork()
            except OSError:
                traceback.print_exc()
                pid = -1
            if pid == 0:
                os.close(report_r)
                fitter.run(report_w, lambda: fitter.fit_function(
                    req.sandbox, req.bundle_path, req.scratch_dir, spare.unshared, spare.pid, hostname=req.name, enter=True,
                    cgroup=req.cgroup))
        if spare.fitter is not None:
            spare.fitter.close()
        os.close(report_w)  # a failed fork: the spare reads EOF and fails its deploy
        # The spare decodes what it is sent after its fork, into memory of its own: not
        # the plan, which only the fitter needs (the template applies the plan the
        # fitter reports): an empty one says "sandboxed".
        lean = msgspec.structs.replace(req, sandbox={}) if req.sandbox is not None else req
        try:
            p.send_msg(spare.sock, lean, fds=[chan_fd, report_r])
        except OSError:  # it died meanwhile: fork the template the long way, same cgroup
            spare.sock.close()
            os.close(report_r)
            return self.spawn(msgspec.structs.replace(req, spare=""), chan_fd)
        spare.sock.close()
        os.close(chan_fd)
        os.close(report_r)
        self.templates[spare.pid] = req.key
        self._spawned(req, spare.pid)

    def _spawn_direct(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        """No namespaces, no cgroup: the template is our own child (one fork, not two)."""
        pid = forking.forker.fork()
        if pid == 0:
            try:
                self._leave_zygote()
                template.run(req, chan_fd, [])
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        os.close(chan_fd)
        self.templates[pid] = req.key
        self._spawned(req, pid)

    def _spawned(self, req: p.SpawnTemplate, pid: int) -> None:
        """Tell the runtime the template's pid, with a pidfd of it when the kernel has them:
        opened here, before ``reap`` can reap it, it never names another process (a pid
        may, once the template is reaped), so the runtime stops the template by it."""
        pidfd = -1
        if pid > 0:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # (before Linux 5.3): the runtime falls back on the pid
        try:
            p.send_msg(self.chan, p.TemplateSpawned(req.key, pid, req.gen), fds=[pidfd] if pidfd >= 0 else None)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def _leave_zygote(self) -> None:
        """In a fresh child: drop the zygote's channels, wake-up pipe and handlers."""
        self._close_zygote_fds()
        forking.default_signals(SIGCHLD, SIGINT, SIGTERM)
        os.setsid()

    def _close_zygote_fds(self) -> None:
        """In a fresh child: close the zygote's channels, spares' sockets and wake-up pipe."""
        os.close(self.chan.detach())
        for spare in (*self.spares.values(), *self.fitting.values()):
            os.close(spare.sock.detach())
            if spare.fitter is not None:
                os.close(spare.fitter.detach())
        os.close(self.wake_r)
        os.close(self.wake_w)
        if _reaper_program >= 0:
            os.close(_reaper_program)

    def _fork_shell(
        self,
        plan: Any,
        cgroup: list[str],
        then: Callable[[list[Protection], list[int], int], object],
        req: p.SpawnTemplate | None,
        successor: int = -1,
        private: tuple[socket.socket, ...] = (),
    ) -> tuple[int, int, int]:
        """Fork the sandboxed *shell* of a template -- pid 2 of fresh
        namespaces, made here around the fork, under a reaper as pid 1
        (``sandbox/reaper.py``; without one the shell is pid 1) -- and its fitter that
        joins it to ``cgroup`` and sets the namespaces up (for ``req``'s
        function too, when given) while the shell runs ``then`` with the
        protections so far, the fitter's report pipe and its end of the
        reaper's lifeline (-1 without a reaper).  No user code loads
        before the report.  Returns the shell's host pid (-1 when the fork
        failed), the clone flags of its namespaces and the fitter's pid (-1
        when it was not forked).  ``successor``: for a spare (no ``req``), the
        socket on which the fitter's successor waits for the function
        (``fitter.wait_for_function``); ``private``: the zygote's ends of the
        spare's sockets, which that successor must not hold.

        No process stands between the zygote and the shell, so the shell
        shares pages only with the zygote (an intermediate's writes would
        have become the template's private memory when it exited)."""
        report_r, report_w = fitter.channel()  # first: nothing to undo when it fails
        # Opened here: an open cgroup.procs still joins the right cgroup after
        # the runtime renames a spare's directory.
        procs: list[int] = []
        try:
            for d in cgroup:
                procs.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            traceback.print_exc()
            procs.append(-1)  # the fitter reports the failure to the template
        network = plan.get("network", "none") if plan is not None else "none"
        ns = NamespacesForNextChildren(network) if plan is not None and plan.get("namespaces", True) else None
        protections = ns.enter() if ns is not None else []
        unshared = ns.unshared if ns is not None else 0
        pid = fitter_pid = pid1 = -1
        life_r = life_w = -1
        try:
            if unshared & CLONE_NEWPID and _reaper_program >= 0:
                try:
                    life_r, life_w = reaper.lifeline()
                    pid1 = forking.forker.fork()
                except OSError:
                    traceback.print_exc()  # the shell is pid 1, as before there were reapers
                if pid1 == 0:
                    reaper.become(_reaper_program, life_r)
            try:
                pid = forking.forker.fork()
            except OSError:
                traceback.print_exc()
            if pid == 0:
                try:
                    if ns is not None:
                        ns.forget()
                    self._leave_zygote()
                    os.close(report_w)
                    for fd in (*procs, life_r):
                        if fd >= 0:
                            os.close(fd)
                    then(protections, [report_r], life_w if pid1 > 0 else -1)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(70)
            if pid > 0:
                try:
                    fitter_pid = forking.forker.fork()
                except OSError:
                    traceback.print_exc()
            if fitter_pid == 0:
                if ns is not None:
                    ns.forget()
                os.close(report_r)
                in_ns = (2 if pid1 > 0 else 1) if unshared & CLONE_NEWPID else pid  # the shell's pid as the fitter sees it

                def work() -> fitter.Fit:
                    shell, _ = fitter.fit_shell(unshared, network, req.name if req is not None else None, procs, in_ns, cgroup)
                    if shell.error or req is None:
                        return shell, []
                    own, fds = fitter.fit_function(req.sandbox, req.bundle_path, req.scratch_dir, unshared, in_ns)
                    return msgspec.structs.replace(own, protections=shell.protections + own.protections), fds

                def close() -> None:  # what the successor of a spare's fitter must not hold
                    self._close_zygote_fds()
                    for fd in (*procs, life_r, life_w, *(x.detach() for x in private)):
                        if fd >= 0:
                            os.close(fd)

                def wait() -> None:
                    fitter.wait_for_function(successor, unshared, in_ns, close)

                fitter.run(report_w, work, wait if successor >= 0 else None)
        finally:
            if ns is not None:
                ns.restore()
        if pid1 > 0 and pid > 0:
            self.reapers[pid] = pid1
            self.reaping[pid1] = pid
        elif pid1 > 0:  # no shell: its namespace goes with its reaper (reaped by ``reap``)
            os.kill(pid1, signal.SIGKILL)
        for fd in (*procs, report_r, report_w, life_r, life_w):
            if fd >= 0:
                os.close(fd)
        return pid, unshared, fitter_pid

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            shell = self.reaping.pop(pid, None)
            if shell is not None:  # a reaper: every process of its namespace was reaped before it
                self.reapers.pop(shell, None)
                held = self.held.pop(pid, None)
                if held is not None:
                    try:
                        p.send_msg(self.chan, held)
                    except OSError:
                        return
                continue
            pid1 = self.reapers.pop(pid, None)
            if pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid1, signal.SIGKILL)  # (not reaped yet: it waits for us to reap its namespace)
            fitted = self.fitting.pop(pid, None)
            if fitted is not None:  # a spare's fitter is done: the spare is ready
                self.spares[fitted.key] = fitted
                try:
                    p.send_msg(self.chan, p.SpareReady(fitted.key, fitted.pid))
                except OSError:
                    return  # the runtime is gone; the loop sees EOF next
                continue
            key = self.templates.pop(pid, None)
            spare = self.spares.get(key) if key is not None else None
            if spare is not None and spare.pid == pid:
                del self.spares[spare.key]  # died before use: the runtime prepares another
                spare.close()
            unready = next((f for f, s in self.fitting.items() if s.pid == pid), None)
            if unready is not None:  # died before its fitter was done: it did not start
                spare = self.fitting.pop(unready)
                spare.close()
                try:
                    p.send_msg(self.chan, p.SpareReady(spare.key, -1))
                except OSError:
                    return
            if key is not None and pid1 is not None:
                # Told when its reaper is reaped: only then is every process of its namespace
                # (its instances) dead, as when the template was pid 1 and its exit waited for them.
                self.held[pid1] = p.TemplateExited(pid, status)
            elif key is not None:
                try:
                    p.send_msg(self.chan, p.TemplateExited(pid, status))
                except OSError:
                    return  # the runtime is gone; the loop sees EOF next

    def loop(self) -> None:
        supervise(self.chan, _decoder, (self.wake_r, self.wake_w), self._on_message, self.reap)
        self.shutdown()

    def _on_message(self, msg: Any, fds: list[int]) -> bool:
        try:
            return self._handle(msg, fds)
        except ConnectionError:
            if self._runtime_gone():  # it went away while we answered (a gateway that failed to start)
                return True  # ends the loop quietly, as EOF does
            raise

    def _runtime_gone(self) -> bool:
        return _gone(self.chan)

    def _handle(self, msg: Any, fds: list[int]) -> bool:
        # A failure to fork one template or spare (out of fds, pids or
        # namespaces) fails that start, not the zygote and every function on it.
        match msg:
            case p.SpawnTemplate():
                for extra in fds[1:]:
                    os.close(extra)
                if not fds:
                    p.send_msg(self.chan, p.TemplateSpawned(msg.key, -1, msg.gen))  # its channel did not arrive
                    return False
                try:
                    self.spawn(msg, fds[0])
                except OSError:  # raised before the channel was handed on or closed
                    if self._runtime_gone():
                        return True
                    traceback.print_exc()
                    with contextlib.suppress(OSError):
                        os.close(fds[0])
                    p.send_msg(self.chan, p.TemplateSpawned(msg.key, -1, msg.gen))
            case p.PrepareSpare():
                for fd in fds:
                    os.close(fd)
                try:
                    self.prepare_spare(msg)
                except OSError:
                    if self._runtime_gone():
                        return True
                    traceback.print_exc()
                    p.send_msg(self.chan, p.SpareReady(msg.key, -1))
            case p.ZygoteShutdown():
                return True
        return False

    def shutdown(self) -> None:
        """Kill the templates and spares and reap them.  Any child is reaped on the way, not
        only theirs: a sandbox shell's reaper is pid 1 of its namespace, and it ends only once
        every process of that namespace is reaped -- the shell and its fitter too, children of ours that
        may still be running or unreaped when the runtime goes away (a stop right after a
        spare or a template was asked for); waiting for the shell alone waited for ever."""
        left = set(self.templates) | set(self.reaping)
        for pid in (*left, *self.fitting):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while left:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            left.discard(pid)


def _gone(chan: socket.socket) -> bool:
    """The runtime closed its end of ``chan`` (without reading anything from it)."""
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLOUT)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))


def _preimport(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        print(f"spanfaas zygote: cannot pre-import {name}: {exc}", file=sys.stderr)


def _warm_sandbox() -> None:
    global _reaper_program
    from spanfaas import sandbox

    _reaper_program = reaper.program()
    sandbox.prepare()  # probe once and prebuild seccomp programs; templates inherit them
    template.warm_sandbox()
    from spanfaas.sandbox import fsview, paths

    fsview.warm([*paths.python_paths(), *paths.SYSTEM_RO, *paths.EXEC_RO])


def _fix_paths() -> None:
    """Where every function gets a mount namespace of its own, name our Python's trees
    (interpreter, venv, spanfaas, the image's packages: ``PYTHONPATH`` but for spanfaas's
    parent) by the fixed paths the fitters bind them at, here, once: templates inherit
    the names without un-sharing a page (``sandbox/runtimepaths.py``)."""
    import spanfaas
    from spanfaas import sandbox
    from spanfaas.sandbox import fixedpaths, runtimepaths

    mounts = next((x for x in sandbox.probe() if x.name == "mount-namespace"), None)
    if os.geteuid() != 0 or mounts is None or not mounts.active:
        return  # no fitter can bind them: the host's names, as before
    parent = os.path.dirname(os.path.dirname(os.path.abspath(spanfaas.__file__)))  # (zygotes.py puts it last)
    images = [x for x in os.environ.get("PYTHONPATH", "").split(os.pathsep) if x and os.path.normpath(x) != parent]
    found, entries = runtimepaths.trees(images)
    if fixedpaths.clash([host for host, _ in found]):
        return  # below /var, which the function's /var/task tmpfs covers: the host's names
    template._preimport_lazy()  # (``_warm_templates``'s imports: renamed with the rest)
    runtimepaths.rewrite(found, entries)


def _warm_templates() -> None:
    template._preimport_lazy()
    template._LAZY_DONE = True
    fitter.warm()


def _wait_as_spare(sock: socket.socket, protections: list[Protection], reports: list[int], lifeline: int) -> None:
    """In a spare: wait for the function to become, then become its template."""
    got = p.recv_msg_lean(sock, _decoder)
    sock.close()
    if got is None:
        return  # the zygote is gone or shut us down
    req, fds = got
    if not isinstance(req, p.SpawnTemplate) or len(fds) != 2:
        raise RuntimeError(f"spare: expected a SpawnTemplate with its channel and fitter report, got {type(req).__name__}")
    template.run(req, fds[0], protections, reports=[*reports, fds[1]], lifeline=lifeline)


def main(argv: list[str]) -> None:
    os.environ.pop("LD_BIND_NOW", None)  # read by the loader at our start (zygotes.py); not the functions'
    if sys.path and sys.path[0] == os.getcwd():
        del sys.path[0]  # ``-m`` put our cwd ("/", zygotes.py) first: no function imports from there
    fd = int(argv[1])
    modules: list[str] = msgspec.json.decode(argv[2]) if len(argv) > 2 else []
    # argv[3:]: flags
    # Ctrl-C and a group-wide SIGTERM are for the control plane, which then
    # closes our channel: the zygote ends on EOF (or with its parent).
    forking.forker.watch()  # before any pre-import: see forking.py
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(0)  # the runtime died before we set the death signal
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    chan = socket.socket(fileno=fd)
    chan.setblocking(True)
    # The warm-up, one step at a time: a runtime that closed meanwhile (a stop during the
    # start) ends it at the next step, not after an image's whole preload.
    steps: list[Callable[[], None]] = [functools.partial(_preimport, name) for name in modules]
    if "--sandbox" in argv:
        steps.append(_warm_sandbox)
    steps.append(_warm_templates)
    if "--sandbox" in argv:
        steps.insert(-1, _fix_paths)  # after every import, before the last warm-up (it renames what they imported)
    for step in steps:
        if _gone(chan):
            os._exit(0)  # nothing forked yet: nothing to stop
        step()
    gc.collect()
    heap.trim()  # the free pages our imports left (compiling from source: ~0.6 MiB) out of every fork's page tables
    heap.fill_holes()  # templates' first objects go to fresh pools, not into our pages
    heap.fill_malloc_holes()  # and their mallocs to fresh pages past our heap
    packing.pack((*packing.ZYGOTE, *packing.TEMPLATE))  # the code run after a fork, on few pages
    gc.freeze()
    z = Zygote(chan)
    z.loop()


if __name__ == "__main__":
    main(sys.argv)
