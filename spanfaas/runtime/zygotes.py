"""The runtime's handle on a zygote process.

There is one zygote for functions without an image, and one per image in
use: it has the image's packages first on its path and pre-imports the
image's ``preload`` modules, so every function on that image forks from a
process that already paid for its heavy imports.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

import spanfaas
from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import ControlChannel
from spanfaas.sandbox.landlock import TEST_ABI_ENV

log = logging.getLogger("spanfaas.runtime")

_decoder = msgspec.msgpack.Decoder(p.ZygoteEvent)


BIND_NOW = "LD_BIND_NOW"


@functools.cache
def compile_platform(package: str | None = None) -> bool:
    """Write the bytecode of spanfaas's own modules (never a function's: zygotes run with
    PYTHONDONTWRITEBYTECODE), once per process, before the first zygote imports them.

    Without it, a checkout installed editable under PYTHONDONTWRITEBYTECODE (this project's
    own CI and dev machines) had every zygote compile spanfaas from source: what the
    compiler leaves on the heap (~1 MiB anon, measured: 13.0 vs 12.1 MiB per template) is
    in every template, copied into each fork's page tables.  A wheel ships its bytecode;
    there this only checks it is fresh (~3 ms; a full compile ~0.24 s).  An install we may
    not write to is left as it is: the zygote compiles in memory, as before.  True when the
    bytecode is all there."""
    root = package or os.path.dirname(os.path.abspath(spanfaas.__file__))
    try:
        return bool(compileall.compile_dir(root, quiet=2, workers=1))
    except OSError:
        return False


class ZygoteProcess:
    """Start, talk to and stop one zygote."""

    def __init__(
        self,
        key: str,
        *,
        preimport: Sequence[str],
        sys_path: Sequence[str] = (),
        sandbox: bool,
        on_message: Callable[[Any, list[int]], None],
        on_exit: Callable[[ZygoteProcess], None],
    ) -> None:
        self.key = key
        self.preimport = list(preimport)
        self.sys_path = list(sys_path)
        self.sandbox = sandbox
        self._on_message = on_message
        self._on_exit = on_exit
        self.proc: subprocess.Popen[bytes] | None = None
        self.chan: ControlChannel | None = None
        self.users = 0
        """Function versions deployed on this zygote (for stopping unused image zygotes)."""
        self.spares: dict[str, Any] = {}
        """Spares forked and waiting: name -> its ``sandbox.Cgroup``."""
        self.spare_pids: dict[str, int] = {}
        self.pending_spares: dict[str, Any] = {}
        """Spares asked for, not yet reported."""

    @property
    def alive(self) -> bool:
        return self.chan is not None

    def start(self) -> None:
        compile_platform()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pkg_parent = str(Path(spanfaas.__file__).resolve().parent.parent)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": os.pathsep.join([*self.sys_path, pkg_parent]),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # never write __pycache__ into a user's bundle
            # Every symbol of the interpreter and libc resolved at start, once, in the zygote:
            # lazily bound, each one a strict instance calls first (setpgid, putenv, sched_yield...)
            # was resolved again in every instance (~12 copy-on-write faults each).  The zygote
            # drops the variable at once (``zygote.main``): it is not the functions' environment.
            BIND_NOW: "1",
        }
        if forced_abi := os.environ.get(TEST_ABI_ENV):  # (tests only: a kernel with an older Landlock)
            env[TEST_ABI_ENV] = forced_abi
        argv = [
            sys.executable,
            "-m",
            "spanfaas.runtime.zygote",
            str(theirs.fileno()),
            msgspec.json.encode(self.preimport).decode(),
        ]
        if self.sandbox:
            argv.append("--sandbox")
        try:
            # A group of its own: a Ctrl-C at the terminal (SIGINT to the foreground group) is the
            # control plane's to act on; it reached the zygote too, which ignores it only once its
            # interpreter has started, so one during that start killed it with a traceback.
            self.proc = subprocess.Popen(
                argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, cwd="/", process_group=0
            )
        except BaseException:
            ours.close()  # (no zygote at its other end)
            raise
        finally:
            theirs.close()
        self.chan = ControlChannel(ours, _decoder, self._message, self._eof)

    def _message(self, msg: Any, fds: list[int]) -> None:
        self._on_message(msg, fds)  # (the fds are its to close)

    def _eof(self) -> None:
        self.chan = None
        self._on_exit(self)

    def spawn(self, req: p.SpawnTemplate, chan_fd: int) -> None:
        assert self.chan is not None
        self.chan.send(req, fds=[chan_fd])

    def prepare_spare(self, name: str, cgroup: Any) -> None:
        assert self.chan is not None
        self.pending_spares[name] = cgroup
        self.chan.send(p.PrepareSpare(name, cgroup.directories()))

    def spare_ready(self, name: str, pid: int) -> Any:
        """Book a reported spare; returns its cgroup when it failed (to remove)."""
        cgroup = self.pending_spares.pop(name, None)
        if pid > 0 and cgroup is not None:
            self.spares[name] = cgroup
            self.spare_pids[name] = pid
            return None
        return cgroup

    def spare_exited(self, pid: int) -> Any:
        """Forget a waiting spare that exited; returns its cgroup (to remove), or None
        if ``pid`` is not one of ours."""
        for name, spare_pid in self.spare_pids.items():
            if spare_pid == pid:
                del self.spare_pids[name]
                return self.spares.pop(name, None)
        return None

    def take_spare(self) -> tuple[str, Any] | None:
        """A waiting spare (its name and cgroup), or None."""
        if not self.spares:
            return None
        name = next(iter(self.spares))
        self.spare_pids.pop(name, None)
        return name, self.spares.pop(name)

    async def close(self, timeout: float = 5.0) -> None:
        if self.chan is not None:
            chan, self.chan = self.chan, None
            chan.close()
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # One still starting its interpreter (before it ignores SIGTERM: it has forked
            # nothing yet) ends here; one past that ends on the closed channel, at the next
            # step of its warm-up (zygote.py), and ignores this.
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):  # (wait_for drops a cancel on Python 3.11)
                await asyncio.to_thread(self.proc.wait)
        except TimeoutError:
            log.warning("spanfaas runtime: zygote %s did not exit; killing it", self.key)
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
