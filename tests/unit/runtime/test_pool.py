"""Pool bookkeeping that needs no processes: instance exits and what they are reported as."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest

from spanfaas.errors import InvalidBundle
from spanfaas.model import ErrorInfo, InvokeContext, parse_manifest
from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import ControlChannel, InstanceConnection
from spanfaas.runtime.pool import Instance, Pool, _template_decoder
from spanfaas.runtime.queueing import expire

KILLED = int(signal.SIGKILL)  # a wait status: killed by SIGKILL


class _Runtime:
    """What a pool asks of its runtime here: the cgroup's OOM-kill count."""

    def __init__(self) -> None:
        self.kills = 0

    def oom_kills(self, pool: Any) -> int:
        return self.kills


def _pool(rt: _Runtime) -> Pool:
    spec = parse_manifest('name = "f"\nhandler = "handler:handler"\nisolation = "reuse"\n')
    return Pool(rt, spec, "/nonexistent", "f-1")  # type: ignore[arg-type]


def _instance(pool: Pool, seq: int) -> Instance:
    inst = Instance(seq)
    inst.ready = True
    pool._instances[seq] = inst
    return inst


async def test_an_oom_kill_nobody_waited_on_is_not_blamed_on_the_next_sigkill() -> None:
    rt = _Runtime()
    pool = _pool(rt)
    unwatched, crashed = _instance(pool, 1), _instance(pool, 2)
    rt.kills = 1  # the cgroup OOM-killed an instance no call waited on (e.g. before its hello)
    pool._on_instance_exit(unwatched.seq, KILLED)
    pool._on_instance_exit(crashed.seq, KILLED)  # later, killed by SIGKILL for another reason
    lost = await pool._why_lost(crashed)
    assert lost.kind == "crashed", lost


async def test_every_call_on_an_oom_killed_instance_is_told_so() -> None:
    rt = _Runtime()
    pool = _pool(rt)
    inst = _instance(pool, 1)
    rt.kills = 1
    pool._on_instance_exit(inst.seq, KILLED)
    # A concurrent (reuse) instance ran two calls: both were lost to the OOM kill.
    assert (await pool._why_lost(inst)).kind == "oom"
    assert (await pool._why_lost(inst)).kind == "oom"


async def test_why_a_template_failed_is_heard_even_when_its_exit_notice_comes_first() -> None:
    """The template's "failed to load" travels on its channel, the zygote's notice
    that it exited on another: the notice may be handled first, and the deploy must
    still fail as the user's error (400), not as a lost template (502)."""
    pool = _pool(_Runtime())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool._chan = ControlChannel(ours, _template_decoder, pool._on_template_message, pool._on_template_eof)
    pool.state = "starting"
    ready = pool._ready = asyncio.get_running_loop().create_future()
    err = ErrorInfo(kind="error", type="AttributeError", message="module 'handler' has no callable 'handler'")
    p.send_msg(theirs, p.TemplateFailed(err))
    theirs.close()  # the template exited ...
    pool.on_template_exit(256)  # ... and the zygote's notice is handled before its channel is read
    with pytest.raises(InvalidBundle, match="has no callable 'handler'"):
        await ready
    assert pool.state == "cold" and pool._chan is None


class _Spawning(_Runtime):
    """A runtime that records the templates a pool asks it to start."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[int] = []

    def spawn_template(self, pool: Any, chan_fd: int, initial: int = 0) -> None:
        self.spawned.append(chan_fd)


async def test_a_template_that_dies_right_after_it_is_ready_is_started_again_for_the_waiting_call() -> None:
    """Ready, then gone (before any instance): the call that waited for the start must
    not wait out its timeout on a cold pool that nothing starts again."""
    rt = _Spawning()
    pool = _pool(rt)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool._chan = ControlChannel(ours, _template_decoder, pool._on_template_message, pool._on_template_eof)
    pool.state = "starting"
    ready = pool._ready = asyncio.get_running_loop().create_future()
    pool.on_spawned(999_999_999)  # never a real pid: it must not be signalled once reaped
    p.send_msg(theirs, p.TemplateReady(import_ms=1.0, protections=[]))
    theirs.close()
    pool.on_template_exit(0)
    await ready  # the start the call awaited succeeded ...
    assert pool.state == "cold" and pool.template_pid == 0  # ... and the template is gone
    loop = asyncio.get_running_loop()
    waiting = loop.create_task(pool._wait(loop.time() + 5))
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(rt.spawned) == 1, "no new template was asked for"
    waiting.cancel()
    pool.close()


def _importing(pool: Pool, printed: bytes) -> tuple[socket.socket, asyncio.Future[None]]:
    """A starting pool whose template said it imports the function's code now (with
    its capture, where the module printed ``printed``); the template's end of the channel."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool._chan = ControlChannel(ours, _template_decoder, pool._on_template_message, pool._on_template_eof)
    pool.state = "starting"
    ready = pool._ready = asyncio.get_running_loop().create_future()
    pool.on_spawned(999_999_999)  # never a real pid: it must not be signalled once reaped
    capture = os.memfd_create("capture")
    try:
        os.write(capture, printed)
        p.send_msg(theirs, p.Importing(), fds=[capture])
    finally:
        os.close(capture)
    return theirs, ready


@pytest.mark.parametrize("notice_first", [True, False])
async def test_a_template_that_exits_while_importing_the_code_fails_the_start_as_the_users_error(notice_first: bool) -> None:
    """``os._exit`` (or a crash) at import: no "failed to load" comes, only EOF and the
    zygote's notice, in either order.  The start fails as the user's error (400), with the
    exit status and what the module printed, not as a lost template (502, started again)."""
    rt = _Spawning()
    pool = _pool(rt)
    theirs, ready = _importing(pool, b"about to leave\n")
    theirs.close()  # the template exited ...
    if not notice_first:
        assert pool._chan is not None
        pool._chan.drain()  # ... its channel's EOF is read first: the start waits for the status
        assert not ready.done()
    pool.on_template_exit(3 << 8)
    with pytest.raises(InvalidBundle, match="the function's code exited with status 3 while being imported") as info:
        await ready
    assert "about to leave" in info.value.extra["traceback"]
    assert pool.state == "cold" and pool._chan is None and pool._ready is None
    assert rt.spawned == [], "started again"


async def test_a_template_that_exits_while_importing_is_the_users_error_though_its_channel_is_still_open() -> None:
    """In the sandbox the zygote's notice can come while the template's end of its channel is
    still held (by a process of its namespace that has not ended yet): no EOF to read.  The
    exit is the module's all the same -- it failed the deploy as "stopped while starting;
    retry" about one run in ten of the sandboxed import-exit test."""
    rt = _Spawning()
    pool = _pool(rt)
    theirs, ready = _importing(pool, b"about to leave\n")
    pool.on_template_exit(7 << 8)  # ... the template's end, ``theirs``, not closed yet
    with pytest.raises(InvalidBundle, match="the function's code exited with status 7 while being imported") as info:
        await ready
    assert "about to leave" in info.value.extra["traceback"]
    assert pool.state == "cold" and pool._chan is None and rt.spawned == []
    theirs.close()


async def test_a_template_killed_by_a_signal_while_importing_names_the_signal() -> None:
    pool = _pool(_Spawning())
    theirs, ready = _importing(pool, b"")
    theirs.close()
    pool.on_template_exit(int(signal.SIGSEGV))
    with pytest.raises(InvalidBundle, match="the function's code was killed by signal SIGSEGV while being imported"):
        await ready


async def test_a_template_is_stopped_by_its_pidfd_never_by_a_number_another_process_took(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the zygote reaping a template and the pool hearing of it, the template's
    pid may be another process's: the pool signals the template by the pidfd the zygote
    opened before it could be reaped, never by that number."""
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    pidfd = os.pidfd_open(gone)
    os.waitpid(gone, 0)  # exited and reaped: its number is free for another process
    taken = os.fork()  # (standing in for the process that took it)
    if taken == 0:
        signal.pause()
        os._exit(0)
    sent: list[int] = []
    real_kill = os.kill
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(pid) or real_kill(pid, sig))
    try:
        pool = _pool(_Runtime())
        pool.on_spawned(taken, pidfd, pool.generation)
        pool.stop_template()
        assert sent == [], "signalled by number"
        pidfd = os.pidfd_open(taken)  # a live template: its pidfd stops it
        pool.on_spawned(taken, pidfd, pool.generation)
        pool.stop_template()
        assert os.waitpid(taken, 0)[1] == KILLED
        assert sent == []
    finally:
        try:
            real_kill(taken, signal.SIGKILL)
            os.waitpid(taken, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# -- a caller's cancel at the moments the hand-made timers act (Pool._wait, Pool._run) --


def _waiting_pool(isolation: str = "reuse", concurrency: int = 1) -> Pool:
    spec = parse_manifest(
        f'name = "f"\nhandler = "handler:handler"\nisolation = "{isolation}"\n[resources]\nconcurrency = {concurrency}\n'
    )
    pool = Pool(_Runtime(), spec, "/nonexistent", "f-1")  # type: ignore[arg-type]
    pool.state = "ready"
    return pool


async def _connected_instance(pool: Pool, seq: int) -> tuple[Instance, socket.socket]:
    """An instance with a real connection; the other end (returned) plays the instance."""
    inst = _instance(pool, seq)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = InstanceConnection(lambda: None, pool._slots)
    await asyncio.get_running_loop().create_unix_connection(lambda: conn, sock=ours)
    inst.conn = conn
    inst.answered = asyncio.get_running_loop().time()
    return inst, theirs


async def _waiter_of(pool: Pool, task: asyncio.Task[Any]) -> Any:
    for _ in range(20):
        if pool._queue.waiters:
            return pool._queue.waiters[0]
        await asyncio.sleep(0)
    raise AssertionError(f"the call never waited: {task}")


async def test_a_caller_cancelled_just_as_it_is_handed_an_instance_gives_it_back_and_is_cancelled() -> None:
    pool = _waiting_pool()
    inst, theirs = await _connected_instance(pool, 1)
    loop = asyncio.get_running_loop()
    try:
        waiting = loop.create_task(pool._wait(loop.time() + 30))
        await _waiter_of(pool, waiting)
        pool._queue.offer(inst)  # handed: the waiter's future is resolved ...
        assert inst.active == 1
        waiting.cancel()  # ... and its caller cancelled before it resumed
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert inst.active == 0 and list(pool._queue.idle) == [inst], "the instance was not given back"
        assert not pool._queue.waiters
    finally:
        if inst.conn is not None:
            inst.conn.close()
        theirs.close()


async def test_a_caller_cancelled_just_as_its_wait_expires_is_cancelled_not_told_it_timed_out() -> None:
    pool = _waiting_pool()
    loop = asyncio.get_running_loop()
    waiting = loop.create_task(pool._wait(loop.time() + 30))
    waiter = await _waiter_of(pool, waiting)
    expire(waiter)  # the deadline fires ...
    waiting.cancel()  # ... and the cancel comes in the same turn
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not pool._queue.waiters


async def test_a_queued_call_whose_caller_is_cancelled_as_its_deadline_fires_never_reaches_the_instance() -> None:
    """A reuse instance runs call A; call B waits on its connection, not written yet.  B's
    deadline fires and its caller is cancelled in the same turn: B must never be written to
    the instance (which would run it for no one, in a slot no one counts), its slot is
    freed, and the cancel reaches its caller."""
    pool = _waiting_pool()
    inst, theirs = await _connected_instance(pool, 1)
    loop = asyncio.get_running_loop()
    ctx = InvokeContext(invocation_id="x")
    try:
        now = loop.time()
        assert pool._queue.hand(inst, now + 30) and pool._queue.hand(inst, now + 30)  # A runs, B queues behind
        a = loop.create_task(pool._run(inst, b"1", ctx, now + 30, 30, time.monotonic(), False))
        for _ in range(5):
            await asyncio.sleep(0)  # A is written
        b = loop.create_task(pool._run(inst, b"2", ctx, now + 30, 30, time.monotonic(), False))
        for _ in range(5):
            await asyncio.sleep(0)
        assert inst.conn is not None
        b_id = max(inst.conn.pending)
        assert [i for i, _f, _frame in inst.conn._out] == [b_id], "B is not held behind A"
        expire(inst.conn.pending[b_id])  # B's deadline fires ...
        b.cancel()  # ... as its caller gives up
        with pytest.raises(asyncio.CancelledError):
            await b
        theirs.setblocking(False)
        sent = theirs.recv(1 << 16)  # A's request
        theirs.sendall(b"".join(p.encode(p.Done(id=b_id - 1))))  # A answers: B's turn would come
        r = await a
        assert r.error is None
        for _ in range(5):
            await asyncio.sleep(0)
        try:
            more = theirs.recv(1 << 16)
        except BlockingIOError:
            more = b""
        assert more == b"", "the request of the call that expired and was cancelled was written to the instance"
        assert sent
        assert inst.active == 0 and pool._queue.pipelined == 0
    finally:
        if inst.conn is not None:
            inst.conn.close()
        theirs.close()
