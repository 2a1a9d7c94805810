"""The master zygote: one lean, single-threaded process that pre-imports the
platform and common stdlib modules and forks function templates from itself,
so idle functions share those pages copy-on-write.

Started by the runtime as ``python -m spanfaas.runtime.zygote FD MODULES``
with a SOCK_SEQPACKET channel on FD.  For each ``SpawnTemplate`` it forks an
*outer* child that joins the function's cgroup and unshares namespaces; the
outer forks the template (pid 1 of the new pid namespace), reports its host
pid and exits.  The zygote is a child subreaper, so templates become its
children; it reports their exits.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import signal
import socket
import struct
import sys
import traceback
from typing import Any

import msgspec

from spanfaas.model import Protection
from spanfaas.runtime import protocol as p
from spanfaas.runtime import template
from spanfaas.runtime.supervise import supervise

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_decoder = msgspec.msgpack.Decoder(p.ZygoteRequest)



def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


class Zygote:
    def __init__(self, chan: socket.socket) -> None:
        self.chan = chan
        self.templates: dict[int, str] = {}
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def spawn(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        if req.sandbox is None and not req.cgroup:
            return self._spawn_direct(req, chan_fd)
        r, w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                self._outer(req, chan_fd, w)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        os.close(chan_fd)
        os.close(w)
        data = os.read(r, 4)
        os.close(r)
        # The outer exits once the template joined its cgroup; reap() collects it.
        if len(data) == 4:
            (inner,) = struct.unpack("i", data)
            self.templates[inner] = req.key
            p.send_msg(self.chan, p.TemplateSpawned(req.key, inner))
        else:
            p.send_msg(self.chan, p.TemplateSpawned(req.key, -1))

    def _spawn_direct(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        """No namespaces, no cgroup: the template is our own child (one fork, not two)."""
        pid = os.fork()
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
        """In a fresh child: drop the zygote's channel, wake-up pipe and handlers."""
        self.chan.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        os.setsid()

    def _outer(self, req: p.SpawnTemplate, chan_fd: int, w: int) -> None:
        self._leave_zygote()
        protections: list[Protection] = []
        pidns = False
        if req.sandbox is not None and req.sandbox.get("namespaces", True):
            from spanfaas import sandbox

            protections = list(sandbox.unshare_namespaces(req.sandbox.get("network", "none")))
            pidns = any(x.name == "pid-namespace" and x.active for x in protections)
        joined_r, joined_w = os.pipe2(os.O_CLOEXEC)
        inner = os.fork()
        if inner == 0:
            try:
                os.close(w)
                os.close(joined_w)
                if pidns:
                    from spanfaas import sandbox

                    setup = sandbox.setup_pid1(req.name, req.sandbox.get("network", "none"))
                    protections = _merge(protections, setup)
                template.run(req, chan_fd, protections, joined=joined_r)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        os.close(joined_r)
        os.write(w, struct.pack("i", inner))
        # Join the template to its cgroup while it sets up its namespaces and
        # sandbox (a cgroup v1 join can wait ~5-20 ms for an RCU grace period);
        # it loads no user code before we say so.
        ok = b"1"
        try:
            for d in req.cgroup:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(inner))
        except OSError:
            traceback.print_exc()
            ok = b"0"
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
            if self.templates.pop(pid, None) is not None:
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


def _merge(a: list[Protection], b: list[Protection]) -> list[Protection]:
    names = {x.name for x in b}
    return [x for x in a if x.name not in names] + list(b)


def main(argv: list[str]) -> None:
    fd = int(argv[1])
    modules: list[str] = msgspec.json.decode(argv[2]) if len(argv) > 2 else []
    # argv[3:]: flags
    # Ctrl-C and a group-wide SIGTERM are for the control plane, which then
    # closes our channel: the zygote ends on EOF (or with its parent).
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
    template._preimport_lazy()
    gc.collect()
    gc.freeze()
    z = Zygote(chan)
    z.loop()


if __name__ == "__main__":
    main(sys.argv)
