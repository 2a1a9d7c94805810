"""Races and edge cases found in review: none of them may hang, leak or misreport."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLEEPER = """
import time

def handler(event, context):
    time.sleep(event or 0)
    return 1
"""


async def test_remove_during_a_cold_start_does_not_hang(harness: Harness) -> None:
    await harness.deploy("cold-remove", "import time\ntime.sleep(0.3)\n" + SLEEPER, "[resources]\ntimeout = 3\n")
    harness.rt.pool("cold-remove").stop_template()  # as scale-to-zero does
    call = asyncio.ensure_future(harness.invoke("cold-remove"))
    await asyncio.sleep(0.05)
    await harness.rt.remove("cold-remove")
    r = await asyncio.wait_for(call, 5)  # finished (drained) or failed, never pending
    assert r.ok or r.error is not None


async def test_a_caller_cancelled_as_it_is_handed_an_instance_gives_it_back(harness: Harness) -> None:
    await harness.deploy("handoff", SLEEPER, 'isolation = "reuse"\n[scaling]\nmax = 1\nmin = 1\n')
    pool = harness.rt.pool("handoff")
    first = asyncio.ensure_future(harness.invoke("handoff", b"0.3"))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(harness.invoke("handoff", b"0"))
    await asyncio.sleep(0.05)
    # Cancel the waiter in the very loop step in which the instance is handed to it.
    orig = pool._queue.offer

    def offer(inst: object, fresh: bool = False) -> None:
        orig(inst, fresh)  # type: ignore[arg-type]
        second.cancel()

    pool._queue.offer = offer  # type: ignore[method-assign]
    try:
        assert (await first).ok
    finally:
        pool._queue.offer = orig  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await second
    r = await harness.invoke("handoff", b"0", timeout=2)
    assert r.ok, r.error


async def test_after_a_timeout_new_calls_avoid_the_dying_multi_slot_instance(harness: Harness) -> None:
    await harness.deploy("slots-timeout", SLEEPER, 'isolation = "reuse"\n[resources]\nconcurrency = 4\ntimeout = 0.5\n')
    assert (await harness.invoke("slots-timeout", b"0")).ok
    slow = await harness.invoke("slots-timeout", b"2")
    assert slow.error is not None and slow.error.kind == "timeout"
    r = await harness.invoke("slots-timeout", b"0")
    assert r.ok, r.error


async def test_scale_in_keeps_busy_instances_and_the_floor(harness: Harness) -> None:
    await harness.deploy(
        "scale-in", SLEEPER, 'isolation = "reuse"\n[resources]\nconcurrency = 4\ntimeout = 5\n[scaling]\nmax = 3\n'
    )
    pool = harness.rt.pool("scale-in")
    pool.scale(3)
    for _ in range(100):
        if pool.stats()["instances"] == 3 and pool.stats()["pending_forks"] == 0:
            break
        await asyncio.sleep(0.02)
    call = asyncio.ensure_future(harness.invoke("scale-in", b"0.5"))
    await asyncio.sleep(0.1)
    retired = pool.retire_idle(time.monotonic() + 100, keep=1, idle_for=30)
    assert retired == 2, "only idle instances, and not below keep"
    r = await call
    assert r.ok, r.error


async def test_calls_queued_on_a_strict_version_being_replaced_still_run(harness: Harness) -> None:
    manifest = "[resources]\ntimeout = 4\n[scaling]\nmax = 1\nprefork = 0\n"
    await harness.deploy("replaced", SLEEPER, manifest)
    running = asyncio.ensure_future(harness.invoke("replaced", b"0.5"))
    await asyncio.sleep(0.2)
    queued = asyncio.ensure_future(harness.invoke("replaced", b"0"))
    await asyncio.sleep(0.05)
    await harness.deploy("replaced", SLEEPER, manifest)
    assert (await running).ok
    r = await queued
    assert r.ok, r.error


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_sys_exit_in_an_async_handler_is_its_error_at_once(harness: Harness, concurrency: int) -> None:
    name = f"exits-{concurrency}"
    code = "import sys\n\nasync def handler(event, context):\n    sys.exit(3)\n"
    await harness.deploy(name, code, f'isolation = "reuse"\n[resources]\nconcurrency = {concurrency}\ntimeout = 3\n')
    r = await harness.invoke(name)
    assert r.error is not None and r.error.kind == "error" and r.error.type == "SystemExit", r.error
    assert r.duration_ms < 2500, "not left to the timeout"


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
@pytest.mark.parametrize("when", ["dead-before-the-write", "killed-with-the-request-unread"])
async def test_an_idle_instance_killed_before_it_read_its_call_is_not_the_functions_crash(
    harness: Harness, isolation: str, when: str
) -> None:
    """An idle instance (a strict child forked ahead, a parked reuse instance) that died
    before the pool heard of it (the OOM killer prefers instances: their oom_score_adj is
    raised) was handed the next call, which never reached it: that call was reported as
    the function's crash ('the instance was killed by signal SIGKILL'; an async one was not
    run again).  The kernel says when the instance went with our bytes unread (the
    connection is reset; or the write finds it closed): the call runs on another instance."""
    import os
    import select
    import signal

    name = f"idle-killed-{isolation}-{when}"
    await harness.deploy(name, SLEEPER, f'isolation = "{isolation}"\n[resources]\ntimeout = 10\n[scaling]\nprefork = 1\n')
    assert (await harness.invoke(name, b"0")).ok
    pool = harness.rt.pool(name)
    async with asyncio.timeout(10):
        while not pool._queue.idle or pool._queue.idle[0].conn is None:
            await asyncio.sleep(0.01)
    inst = pool._queue.idle[0]
    if when == "dead-before-the-write":
        signal.pidfd_send_signal(inst.pidfd, signal.SIGKILL)
        select.select([inst.pidfd], [], [], 10)  # dead, and the loop has not run since: the pool does not know
        r = await harness.invoke(name, b"0")
    else:
        os.kill(inst.pid, signal.SIGSTOP)  # it cannot read what we write
        call = asyncio.ensure_future(harness.invoke(name, b"0"))
        async with asyncio.timeout(10):
            while inst.conn is None or not inst.conn.pending or inst.conn._unsent:
                await asyncio.sleep(0)  # handed to it and written
        signal.pidfd_send_signal(inst.pidfd, signal.SIGKILL)
        r = await call
    assert r.ok, r.error


PRINTING_SLEEPER = """
import time

def handler(event, context):
    print("sleeping", flush=True)
    time.sleep(event)
    return 1
"""


def _hold_sockets(pid: int) -> list[int]:
    """Copies of process ``pid``'s sockets (pidfd_getfd): while we hold them, its end of a
    channel does not close when it dies."""
    import ctypes
    import os

    syscall = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    held = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            got = syscall(438, pidfd, int(fd), 0)  # SYS_pidfd_getfd
            if got >= 0:
                held.append(got)
    finally:
        os.close(pidfd)
    return held


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_an_instance_lost_with_its_template_is_the_platforms_failure_however_late_the_news(
    sandboxed: Harness, isolation: str
) -> None:
    """A call whose template died under it was the platform's failure (InfraError, an async
    invocation runs again) only if the runtime heard of the death (the template's channel
    closing, the zygote's notice) within 2 s of losing the instance; later, it was reported as
    the function's crash.  Now the template's pidfd says it at once, however late the news."""
    import os
    import signal

    from spanfaas.errors import InfraError
    from spanfaas.runtime.instance import logs_so_far
    from tests.integration.runtime.conftest import require

    require(sandboxed, "pid-namespace")  # its instances die with it
    name = f"late-news-{isolation}"
    await sandboxed.deploy(name, PRINTING_SLEEPER, f'isolation = "{isolation}"\n[resources]\ntimeout = 20\n')
    assert (await sandboxed.invoke(name, b"0")).ok
    pool = sandboxed.rt.pool(name)
    assert pool.zygote is not None and pool.zygote.proc is not None
    zygote, template = pool.zygote.proc.pid, pool.template_pid
    call = asyncio.ensure_future(sandboxed.invoke(name, b"30"))
    deadline = time.monotonic() + 10
    while not any("sleeping" in logs_so_far(i.capture) for i in pool._instances.values()):  # the handler runs
        assert time.monotonic() < deadline, "the call did not start"
        await asyncio.sleep(0.01)
    held = _hold_sockets(template)  # its channel stays open when it dies ...
    os.kill(zygote, signal.SIGSTOP)  # ... and its zygote neither reaps it nor says it exited
    try:
        os.kill(template, signal.SIGKILL)
        started = time.monotonic()
        got = await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), 10)
        assert isinstance(got[0], InfraError) and "lost with the template" in str(got[0]), got[0]
        assert time.monotonic() - started < 1.5, "told at once, not after a wait for news"
    finally:
        os.kill(zygote, signal.SIGCONT)
        for fd in held:
            os.close(fd)
    assert (await sandboxed.invoke(name, b"0")).ok  # a new template serves


async def test_a_template_ready_before_the_zygote_reports_its_pid_is_not_ready_without_it(harness: Harness) -> None:
    """The template says it is ready on its own channel; the zygote reports its pid on another
    socket, which may be read later (a spare is handed its channel before the zygote reports
    it, and under load either socket may be read first).  Forced here: the zygote's report is
    held until the template has said it is ready.  A deploy must not end (the pool ready) with
    the template's pid unknown: it could not be killed, watched or told apart from a spare."""
    from spanfaas.runtime import protocol as p

    rt = harness.rt
    zygote = rt._zygote_for(None)
    deliver = zygote._on_message
    loop = asyncio.get_running_loop()

    async def later(msg: p.TemplateSpawned, fds: list[int]) -> None:
        pool = rt._by_key[msg.key]
        async with asyncio.timeout(5):
            while pool.import_ms == 0.0:  # set when the template says it is ready
                await asyncio.sleep(0.001)
        await asyncio.sleep(0.1)  # (time for a deploy that ended then to be seen ended)
        deliver(msg, fds)

    def held(msg: object, fds: list[int]) -> None:
        if isinstance(msg, p.TemplateSpawned):
            loop.create_task(later(msg, fds))
        else:
            deliver(msg, fds)

    zygote._on_message = held
    try:
        await harness.deploy("pid-late", SLEEPER)
    finally:
        zygote._on_message = deliver
    pool = rt.pool("pid-late")
    assert pool.template_pid > 0, "the deploy ended with the template's pid unknown"
    assert pool.stats()["state"] == "ready"
    assert (await harness.invoke("pid-late")).output == b"1"
    await rt.remove("pid-late")


async def test_a_late_spawn_notice_of_an_earlier_template_is_not_taken_for_the_current_ones(harness: Harness) -> None:
    """The zygote's notice that it forked a template travels on its own socket, and may be read
    after the template it names is gone and the pool has asked for the next one (same key).
    Delivered here, stale, to a pool whose current template serves: a stale failure notice
    killed the current template; a stale pid was taken for the current template's."""
    import subprocess

    from spanfaas.runtime import protocol as p

    rt = harness.rt
    await harness.deploy("stale-notice", SLEEPER)
    pool = rt.pool("stale-notice")
    current, starts = pool.template_pid, pool.cold_starts
    assert pool.generation > 0
    stale = pool.generation - 1
    other = subprocess.Popen(["sleep", "30"])  # stands for the earlier template, still running
    try:
        pidfd = os.pidfd_open(other.pid)
        rt._on_zygote_message(p.TemplateSpawned(pool.key, other.pid, stale), [pidfd])
        rt._on_zygote_message(p.TemplateSpawned(pool.key, -1, stale), [])
        assert pool.template_pid == current, "a stale pid was taken for the current template's"
        assert other.pid not in rt._by_pid
        assert other.wait(5) == -signal.SIGKILL, "the earlier template, known now, is stopped"
        assert _closed(pidfd)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    r = await harness.invoke("stale-notice")
    assert r.ok and r.output == b"1", r.error
    assert pool.cold_starts == starts, "the current template was stopped by a stale notice"
    await rt.remove("stale-notice")


def _closed(fd: int) -> bool:
    """``fd`` (the stale notice's pidfd) was closed, not leaked."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False
