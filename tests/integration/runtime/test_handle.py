"""The runtime's handle on an instance signals it only through a pidfd opened while it lived."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess

import pytest

from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import InstanceConnection
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


def _killed(pid: int) -> bool:
    """Whether a SIGKILL reached ``pid``, told at once: a kill queues the signal before it
    returns (pending, or the process already dying), where poll() would see it only later."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    bit = 1 << (signal.SIGKILL - 1)
    return fields["State"].strip()[0] in "ZX" or bool((int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)) & bit)


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
        assert not _killed(victim.pid), "a kill of the instance's handle reached the process that took its pid"
    finally:
        ours.close()
        if victim is not None:
            victim.kill()
            victim.wait()


async def _connected(inst: Instance, group_member: bool) -> tuple[int, InstanceConnection, int]:
    """A real instance, connected as the pool connects one: it leads its group, says hello,
    then (with ``group_member``) forks a process into its group, and waits for a byte to exit.
    Returns its pid, its connection, and the read end of a pipe telling the member's pid."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    r, w = os.pipe()
    hello = b"".join(p.encode(p.Hello(1)))
    pid = os.fork()
    if pid == 0:  # the instance
        try:
            os.setpgid(0, 0)
            ours.close()
            os.close(r)
            if group_member:
                member = os.fork()
                if member == 0:
                    os.close(w)
                    theirs.close()
                    os.execv("/bin/sleep", ["sleep", "60"])
                os.write(w, str(member).encode())
            os.close(w)
            theirs.send(hello)
            theirs.recv(1)  # until told to exit (or the runtime's end closes)
        finally:
            os._exit(0)
    theirs.close()
    os.close(w)
    conn = await connect(inst, ours, lambda: None, 1, 1 << 20, sandbox=False)
    return pid, conn, r


async def _exit_and_reap(pid: int, conn: InstanceConnection) -> None:
    """The instance exits (its connection closes) and its parent (here: us) reaps it."""
    conn.close()
    await asyncio.sleep(0)  # (the transport closes its socket on the next turn)
    os.waitpid(pid, 0)


async def test_a_reaped_instance_whose_pid_and_group_id_were_reused_is_never_killed_through_them() -> None:
    """kill_group after the template reaped the instance (its exit still on its way to the pool,
    or the pool resetting as the template goes): the instance's pid, and with it the id of its
    now empty process group, may be another process's, leading its own group as instances do.
    Forced here with ns_last_pid.  The group kill must not reach that process."""
    if os.geteuid() != 0:
        pytest.skip("giving a process a chosen pid (ns_last_pid) needs root")
    inst = Instance(1)
    pid, conn, r = await _connected(inst, group_member=False)
    os.close(r)
    victim = None
    try:
        assert inst.pid == pid and inst.pidfd >= 0
        await _exit_and_reap(pid, conn)  # its pid is free
        victim = _take_pid(pid)
        if victim is None:
            pytest.skip(f"pid {pid} was taken by another process on the machine")
        inst.kill_group()
        assert not _killed(victim.pid), "the group kill of a reaped instance reached the process group that took its pid"
    finally:
        inst.release_fd()
        if victim is not None:
            victim.kill()
            victim.wait()


async def test_the_group_kill_reaches_what_the_instance_forked_after_the_instance_was_reaped() -> None:
    """A process the instance forked into its group outlives it: the group kill still reaches it,
    though the instance was reaped (the group keeps its id while it has a member)."""
    inst = Instance(1)
    pid, conn, r = await _connected(inst, group_member=True)
    member = int(os.read(r, 32))
    os.close(r)
    try:
        member_fd = os.pidfd_open(member)
    except ProcessLookupError:
        pytest.fail("the instance's group member died before the test could watch it")
    try:
        await _exit_and_reap(pid, conn)  # its member lives on (re-parented)
        assert os.getpgid(member) == pid
        inst.kill_group()
        assert select.select([member_fd], [], [], 5.0)[0], "the group kill did not reach the instance's group member"
    finally:
        try:
            signal.pidfd_send_signal(member_fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(member_fd)
        inst.release_fd()
