"""The master zygote: one lean, single-threaded process that pre-imports the
platform and common stdlib modules and forks function templates from itself,
so idle functions share those pages copy-on-write.

Started by the runtime as ``python -m spanfaas.runtime.zygote FD MODULES``
with a SOCK_SEQPACKET channel on FD.  For each ``SpawnTemplate`` it forks the
template as pid 1 of a new pid namespace (``PidNamespaceForNextChild``); the
template unshares its other namespaces itself, while a throwaway sibling
joins it to the function's cgroup.  The zygote is a child subreaper; it
reports its templates' exits.

A *spare* (``PrepareSpare``) is the same shell forked ahead of any deploy:
namespaces, pid 1 and the cgroup join -- the slow part of a sandboxed cold
start -- are done when a ``SpawnTemplate`` naming it arrives, and the spare
goes on as that function's template.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from spanfaas.model import Protection
from spanfaas.runtime import forking
from spanfaas.runtime import protocol as p
from spanfaas.runtime import template
from spanfaas.runtime.supervise import supervise

SIGCHLD, SIGINT, SIGTERM = int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_decoder = msgspec.msgpack.Decoder(p.ZygoteRequest)



def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


class Spare:
    """A prepared sandbox shell: pid 1 of fresh namespaces, in its cgroup,
    blocked on ``sock`` until a ``SpawnTemplate`` names it."""

    def __init__(self, key: str, pid: int, sock: socket.socket) -> None:
        self.key = key
        self.pid = pid
        self.sock = sock


class Zygote:
    def __init__(self, chan: socket.socket) -> None:
        self.chan = chan
        self.templates: dict[int, str] = {}
        self.spares: dict[str, Spare] = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def spawn(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        spare = self.spares.pop(req.spare, None) if req.spare else None
        if spare is not None:
            return self._hand_to_spare(spare, req, chan_fd)
        if req.sandbox is None and not req.cgroup:
            return self._spawn_direct(req, chan_fd)
        def run(protections: list[Protection], joined: int) -> None:
            template.run(req, chan_fd, protections, joined=joined)

        inner = self._fork_shell(req.sandbox, req.cgroup, run, name=req.name)
        os.close(chan_fd)
        if inner > 0:
            self.templates[inner] = req.key
        p.send_msg(self.chan, p.TemplateSpawned(req.key, inner))

    def prepare_spare(self, req: p.PrepareSpare) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def wait(protections: list[Protection], joined: int) -> None:
            ours.close()  # our end must not keep the spare alive after we are gone
            _wait_as_spare(theirs, protections, joined)

        inner = self._fork_shell({"namespaces": True, "network": "none"}, req.cgroup, wait, name=None)
        theirs.close()
        if inner > 0:
            self.templates[inner] = req.key
            self.spares[req.key] = Spare(req.key, inner, ours)
        else:
            ours.close()
        p.send_msg(self.chan, p.SpareReady(req.key, inner))

    def _hand_to_spare(self, spare: Spare, req: p.SpawnTemplate, chan_fd: int) -> None:
        try:
            p.send_msg(spare.sock, req, fds=[chan_fd])
        except OSError:  # it died meanwhile: fork the template the long way, same cgroup
            spare.sock.close()
            return self.spawn(msgspec.structs.replace(req, spare=""), chan_fd)
        spare.sock.close()
        os.close(chan_fd)
        self.templates[spare.pid] = req.key
        p.send_msg(self.chan, p.TemplateSpawned(req.key, spare.pid))

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
        p.send_msg(self.chan, p.TemplateSpawned(req.key, pid))

    def _leave_zygote(self) -> None:
        """In a fresh child: drop the zygote's channels, wake-up pipe and handlers."""
        os.close(self.chan.detach())
        for spare in self.spares.values():
            os.close(spare.sock.detach())
        os.close(self.wake_r)
        os.close(self.wake_w)
        forking.default_signals(SIGCHLD, SIGINT, SIGTERM)
        os.setsid()

    def _fork_shell(self, plan: Any, cgroup: list[str], then: Callable[[list[Protection], int], object], name: str | None) -> int:
        """Fork the sandboxed *shell* of a template: pid 1 of a new pid namespace
        (made here, around the fork), which unshares its other namespaces
        itself and runs ``then``.  A short-lived sibling joins it to ``cgroup``
        meanwhile (a cgroup v1 join can wait ~5-20 ms for an RCU grace
        period) and says so on a pipe; no user code loads before.  Returns the
        shell's host pid (-1 when the fork failed).

        No process stands between the zygote and the shell, so the shell
        shares pages only with the zygote (an intermediate's writes would
        have become the template's private memory when it exited)."""
        # Opened here: an open cgroup.procs still joins the right cgroup after
        # the runtime renames a spare's directory.
        procs: list[int] = []
        try:
            for d in cgroup:
                procs.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            traceback.print_exc()
            procs.append(-1)  # the joiner reports the failure to the template
        network = plan.get("network", "none") if plan is not None else "none"
        namespaces = plan is not None and plan.get("namespaces", True)
        joined_r, joined_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid, pidns = self._fork_in_pid_namespace() if namespaces else (forking.forker.fork(), None)
        except OSError:
            traceback.print_exc()
            pid, pidns = -1, None
        if pid == 0:
            try:
                self._leave_zygote()
                os.close(joined_w)
                for fd in procs:
                    if fd >= 0:
                        os.close(fd)
                protections: list[Protection] = []
                if namespaces:
                    from spanfaas import sandbox

                    assert pidns is not None
                    protections = _merge(sandbox.unshare_namespaces(network, pid=False), [pidns])
                    if pidns.active:
                        protections = _merge(protections, sandbox.setup_pid1(name, network))
                then(protections, joined_r)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        os.close(joined_r)
        if pid > 0:
            self._join(pid, procs, joined_w)
        for fd in (*procs, joined_w):
            if fd >= 0:
                os.close(fd)
        return pid

    def _fork_in_pid_namespace(self) -> tuple[int, Protection]:
        from spanfaas import sandbox

        with sandbox.PidNamespaceForNextChild() as pidns:
            pid = forking.forker.fork()
        return pid, pidns

    def _join(self, pid: int, procs: list[int], joined_w: int) -> None:
        """Write ``pid`` into each cgroup.procs from a throwaway child, then b"1"
        (b"0" on failure) to ``joined_w``; the zygote goes on meanwhile."""
        if not procs:
            os.write(joined_w, b"1")
            return
        try:
            joiner = forking.forker.fork()
        except OSError:
            traceback.print_exc()
            os.write(joined_w, b"0")
            return
        if joiner == 0:
            ok = b"1"
            try:
                for fd in procs:
                    if fd < 0:
                        raise OSError("a cgroup.procs could not be opened")
                    os.write(fd, str(pid).encode())
            except BaseException:
                traceback.print_exc()
                ok = b"0"
            finally:
                os.write(joined_w, ok)
                os._exit(0)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            key = self.templates.pop(pid, None)
            spare = self.spares.get(key) if key is not None else None
            if spare is not None and spare.pid == pid:
                del self.spares[spare.key]  # died before use: the runtime prepares another
                spare.sock.close()
            if key is not None:
                try:
                    p.send_msg(self.chan, p.TemplateExited(pid, status))
                except OSError:
                    return  # the runtime is gone; the loop sees EOF next

    def loop(self) -> None:
        supervise(self.chan, _decoder, (self.wake_r, self.wake_w), self._on_message, self.reap)
        self.shutdown()

    def _on_message(self, msg: Any, fds: list[int]) -> bool:
        match msg:
            case p.SpawnTemplate():
                self.spawn(msg, fds[0])
                for extra in fds[1:]:
                    os.close(extra)
            case p.PrepareSpare():
                for fd in fds:
                    os.close(fd)
                self.prepare_spare(msg)
            case p.ZygoteShutdown():
                return True
        return False

    def shutdown(self) -> None:
        for pid in list(self.templates):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.templates):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _wait_as_spare(sock: socket.socket, protections: list[Protection], joined: int) -> None:
    """In a spare: wait for the function to become, then become its template."""
    got = p.recv_msg(sock, _decoder)
    sock.close()
    if got is None:
        return  # the zygote is gone or shut us down
    req, fds = got
    if not isinstance(req, p.SpawnTemplate) or len(fds) != 1:
        raise RuntimeError(f"spare: expected a SpawnTemplate with its channel, got {type(req).__name__}")
    from spanfaas import sandbox

    protections = _merge(protections, [sandbox.set_hostname(req.name)])
    template.run(req, fds[0], protections, joined=joined)


def _merge(a: list[Protection], b: list[Protection]) -> list[Protection]:
    names = {x.name for x in b}
    return [x for x in a if x.name not in names] + list(b)


def main(argv: list[str]) -> None:
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
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            print(f"spanfaas zygote: cannot pre-import {name}: {exc}", file=sys.stderr)
    if "--sandbox" in argv:
        from spanfaas import sandbox

        sandbox.prepare()  # probe once and prebuild seccomp programs; templates inherit them
        from spanfaas.sandbox import fsview, paths

        fsview.warm([*paths.python_paths(), *paths.SYSTEM_RO, *paths.EXEC_RO])
    template._preimport_lazy()
    gc.collect()
    gc.freeze()
    z = Zygote(chan)
    z.loop()


if __name__ == "__main__":
    main(sys.argv)
