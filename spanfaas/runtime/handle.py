"""The runtime's handle on one instance: a child its template forked.

The template sends the pool a socket to the new instance and its log capture;
``connect`` reads the instance's hello (its pid) and opens the connection that
carries its invocations.  An ``Instance`` then holds what the pool knows of
it: its pidfd (signals reach it and never a reused pid), its capture, its
connection, and the calls handed to it (runtime/queueing.py counts them).
Child-side code of an instance is in runtime/instance.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import signal
import socket
import time
from collections.abc import Callable

from spanfaas.runtime.channels import InstanceConnection, read_hello

__all__ = ["HELLO_TIMEOUT", "INSTANCE_OOM_SCORE_ADJ", "Instance", "connect"]

HELLO_TIMEOUT = 10.0
PIDFD_SIGNAL_PROCESS_GROUP = 4
"""pidfd_send_signal's flag (Linux 6.9) that signals the process group of the pidfd's process."""
INSTANCE_OOM_SCORE_ADJ = 500


class Instance:
    __slots__ = (
        "seq", "pid", "pidfd", "capture", "gone", "conn", "active", "served", "created", "last_used", "exit_status",
        "timed_out", "retired", "ready", "expires", "answered", "window", "oom", "orphaned",
    )  # fmt: skip

    def __init__(self, seq: int, capture: int = -1, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.seq = seq
        self.pid = 0
        self.pidfd = -1
        self.capture = capture
        """Its log capture (a memfd, from the template): what the call running on it
        printed is read here when it times out, crashes or is OOM-killed."""
        self.gone = False
        """It exited or was lost (release_fd): its capture is closed once no call needs it."""
        self.conn: InstanceConnection | None = None
        self.active = 0
        self.served = 0
        self.created = time.monotonic()
        self.last_used = self.created
        # (The loop passed in, where the caller has it: on Python 3.11 each
        # asyncio.get_running_loop() is a getpid() syscall, and this runs per instance.)
        self.exit_status: asyncio.Future[int] = (loop or asyncio.get_running_loop()).create_future()
        self.timed_out = False
        self.retired = False
        self.ready = False
        self.expires = 0.0
        """The latest deadline (loop clock) of the invocations handed to it: a call
        queued behind others must not expire before them (see Queue.hand)."""
        self.answered = 0.0
        """When (loop clock) it last answered, or took a call while it had none."""
        self.oom = False
        """It died by SIGKILL as the cgroup's OOM killer counted one more kill (see Pool._on_instance_exit)."""
        self.orphaned = False
        """It went with its template (the template died, or the runtime stopped it): the
        platform's failure, not the function's (see Pool._run)."""
        self.window = 1
        """Calls it may hold beyond its slots now: grows with each short call it
        answers, back to 1 after a long one or a quiet spell (runtime/pipelining.py)."""

    def kill(self) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """Kill the instance and every process it forked (it leads its group).

        Through its pidfd, never its number: once its template reaps it, its pid, and
        with it the id of its group when no member is left, may be another process's
        (leading a group of its own, as instances do).  The pidfd names the instance's
        own group however late (Linux 6.9: PIDFD_SIGNAL_PROCESS_GROUP)."""
        if self.pidfd < 0:
            return
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL, None, PIDFD_SIGNAL_PROCESS_GROUP)
        except (ProcessLookupError, PermissionError):  # (ESRCH: no process left in its group)
            pass
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # A kernel before 6.9: by number, only while it has not exited (it holds its pid,
            # so its group's id is no one else's); its template kills the group when it reaps it.
            if self.pid > 0 and not select.select([self.pidfd], [], [], 0)[0]:  # (readable: exited)
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.kill()  # (it may have left its group)

    def release_fd(self) -> None:
        """It is gone: close its pidfd, and its capture unless a call still has to read it."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.gone = True
        if self.active == 0:
            self.close_capture()

    def close_capture(self) -> None:
        if self.capture >= 0:
            os.close(self.capture)
            self.capture = -1


async def connect(
    inst: Instance, sock: socket.socket, on_lost: Callable[[], None], slots: int, max_frame: int, *, sandbox: bool,
    loop: asyncio.AbstractEventLoop | None = None,
) -> InstanceConnection:
    """Read the hello of the instance at the end of ``sock`` (its pid: ``inst`` gets its
    pidfd) and open its connection.  Raises OSError or TimeoutError if it never says hello."""
    loop = loop or asyncio.get_running_loop()
    _seq, pid = await read_hello(sock, HELLO_TIMEOUT, loop)
    if pid > 0:
        pidfd = os.pidfd_open(pid)
        # It said hello alive, but may have exited since, and been reaped by its template:
        # then its pid may be another process's, and so may the pidfd.  It holds its end of
        # ``sock`` until it exits (an exiting process closes its files before it can be
        # reaped): no EOF now, it was alive when its pidfd was opened, which is then its own.
        try:
            exited = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            exited = False
        except OSError:
            exited = True
        if exited:
            os.close(pidfd)
            raise ConnectionError(f"instance {pid} exited right after it said hello")
        inst.pid, inst.pidfd = pid, pidfd
    if sandbox and pid > 0:
        _raise_oom_score(pid)
    conn = InstanceConnection(on_lost, slots, max_frame, loop)
    await loop.create_unix_connection(lambda: conn, sock=sock)
    return conn


def _raise_oom_score(pid: int) -> None:
    """Make an instance the OOM killer's choice over its template.

    Raising a score needs no privilege (lowering the template's would need
    CAP_SYS_RESOURCE, which hosts often withhold)."""
    try:
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY)
        try:
            os.write(fd, b"%d" % INSTANCE_OOM_SCORE_ADJ)
        finally:
            os.close(fd)
    except OSError:
        pass  # not root, or already gone: the cgroup limit still holds
