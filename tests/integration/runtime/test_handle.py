"""The runtime's handle on an instance signals it only through a pidfd opened while it lived."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from spanfaas.runtime import protocol as p
from spanfaas.runtime.handle import Instance, connect

pytestmark = pytest.mark.asyncio


def _take_pid(pid: int) -> subprocess.Popen[bytes] | None:
    """A process (leading its own group) with the free ``pid``, made to take it (root:
    ns_last_pid); None when another process on the machine took it first each time."""
    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        victim = subprocess.Popen(["sleep", "60"], process_group=0)
        if victim.pid == pid:
            return victim
        victim.kill()
        victim.wait()
    return None


async def test_an_instance_reaped_before_its_pidfd_is_opened_is_never_signalled_through_its_reused_pid() -> None:
    """An instance says hello (its pid comes with it) and may exit, and be reaped by its
    template, before the runtime opens its pidfd; its pid may then be another process's.
    Forced here: the instance is reaped, and its pid given to another process (leading
    its group, as an instance does) before connect reads the hello.  connect must not
    take that process for the instance, and no kill of the handle may reach it."""
    if os.geteuid() != 0:
        pytest.skip("giving a process a chosen pid (ns_last_pid) needs root")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    hello = b"".join(p.encode(p.Hello(1)))
    pid = os.fork()
    if pid == 0:  # the instance: says hello, and exits
        try:
            theirs.send(hello)
        finally:
            os._exit(0)
    theirs.close()
    victim = None
    try:
        os.waitpid(pid, 0)  # reaped: its pid is free
        victim = _take_pid(pid)
        if victim is None:
            pytest.skip(f"pid {pid} was taken by another process on the machine")
        inst = Instance(1)
        with pytest.raises(ConnectionError, match="exited"):
            await connect(inst, ours, lambda: None, 1, 1 << 20, sandbox=False)
        assert inst.pidfd == -1, "the handle holds a pidfd of another process"
        inst.kill()
        inst.kill_group()
        assert victim.poll() is None, "a kill of the instance's handle reached the process that took its pid"
    finally:
        ours.close()
        if victim is not None:
            victim.kill()
            victim.wait()
