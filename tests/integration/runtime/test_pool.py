"""Pools: backpressure, scale out, scale to zero, drain on redeploy and remove."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import time
from collections.abc import Callable

import pytest

from spanfaas.errors import FunctionNotFound, InfraError, TooManyRequests
from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import InstanceConnection
from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLOW = """
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0.2) if isinstance(event, dict) else 0.2)
    return {"pid": os.getpid(), "version": VERSION}

VERSION = 1
"""


async def test_full_queue_gives_too_many_requests(harness: Harness) -> None:
    await harness.deploy("narrow", SLOW, 'isolation = "reuse"\n[scaling]\nmax = 1\nqueue = 2\n')
    assert (await harness.invoke("narrow", b'{"sleep": 0}')).ok
    calls = [asyncio.ensure_future(harness.invoke("narrow")) for _ in range(3)]
    await asyncio.sleep(0.05)  # one running, two queued
    with pytest.raises(TooManyRequests, match="scaling.queue = 2"):
        await harness.invoke("narrow")
    results = await asyncio.gather(*calls)
    assert all(r.ok for r in results)


async def test_the_autoscaler_counts_only_the_calls_a_full_queue_admitted(harness: Harness) -> None:
    """'peak concurrency 13' with 12 calls admitted: a call refused for a full queue (429) was
    counted in the concurrency the autoscaler sees, so a burst of refusals scaled the pool out."""
    await harness.deploy("refusing", SLOW, 'isolation = "reuse"\n[scaling]\nmax = 1\nqueue = 2\ncooldown = 600\n')
    assert (await harness.invoke("refusing", b'{"sleep": 0}')).ok
    pool = harness.rt.pool("refusing")
    calls = [asyncio.ensure_future(harness.invoke("refusing", b'{"sleep": 1}'))]
    while pool.stats()["busy"] < 1:  # the first runs (or is on its way), then two wait
        await asyncio.sleep(0.01)
    calls += [asyncio.ensure_future(harness.invoke("refusing", b'{"sleep": 0}')) for _ in range(2)]
    while pool.stats()["waiting"] < 2:
        await asyncio.sleep(0.01)
    for _ in range(10):
        with pytest.raises(TooManyRequests):
            await harness.invoke("refusing")
    assert all(r.ok for r in await asyncio.gather(*calls))
    early = harness.rt.early
    early.autoscale(pool, time.monotonic())  # (the runtime's own ticks may have looked already: the window keeps the peak)
    assert early.scaler(pool).peak == 3  # one running, two waiting


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_scale_out_under_load_within_max(harness: Harness, isolation: str) -> None:
    name = f"wide-{isolation}"
    await harness.deploy(name, SLOW, f'isolation = "{isolation}"\n[scaling]\nmax = 4\nprefork = 1\n')
    pool = harness.rt.pool(name)
    started = time.monotonic()
    results = await asyncio.gather(*(harness.invoke(name, b'{"sleep": 0.3}') for _ in range(8)))
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    pids = {json.loads(r.output)["pid"] for r in results}
    assert len(pids) == (8 if isolation == "strict" else 4)
    # 8 calls of 0.3 s on at most 4 instances take two rounds, not eight.
    assert elapsed < 0.3 * 8 / 2
    assert pool.stats()["instances"] <= 4 + 1


async def test_idle_pool_scales_to_zero_and_cold_starts_again(harness: Harness) -> None:
    await harness.deploy("sleepy", SLOW, 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.5\n')
    pool = harness.rt.pool("sleepy")
    assert (await harness.invoke("sleepy", b'{"sleep": 0}')).ok
    assert pool.stats()["instances"] == 1
    for _ in range(40):
        await asyncio.sleep(0.1)
        if pool.state == "cold":
            break
    assert pool.state == "cold" and pool.stats()["instances"] == 0 and pool.template_pid == 0
    r = await harness.invoke("sleepy", b'{"sleep": 0}')
    assert r.ok and r.cold
    assert pool.cold_starts == 2


async def test_redeploy_drains_in_flight_and_routes_new_calls_to_new_version(harness: Harness) -> None:
    await harness.deploy("rolling", SLOW, 'isolation = "reuse"\n')
    old_calls = [asyncio.ensure_future(harness.invoke("rolling", b'{"sleep": 0.4}')) for _ in range(2)]
    await asyncio.sleep(0.1)
    await harness.deploy("rolling", SLOW.replace("VERSION = 1", "VERSION = 2"), 'isolation = "reuse"\n')
    new = await harness.invoke("rolling", b'{"sleep": 0}')
    assert json.loads(new.output)["version"] == 2
    old = await asyncio.gather(*old_calls)
    assert [json.loads(r.output)["version"] for r in old] == [1, 1], [r.error for r in old]


async def test_remove_waits_for_in_flight_then_forgets(harness: Harness) -> None:
    await harness.deploy("gone", SLOW, 'isolation = "strict"\n')
    call = asyncio.ensure_future(harness.invoke("gone", b'{"sleep": 0.3}'))
    await asyncio.sleep(0.05)
    await harness.rt.remove("gone")
    assert (await call).ok
    with pytest.raises(FunctionNotFound, match="'gone' is not deployed"):
        await harness.invoke("gone")


async def test_a_remove_given_up_while_it_drains_still_stops_the_template(harness: Harness) -> None:
    """A remove waits for what runs; its caller may give up first (the spanning scheduler
    waits ``timeout`` seconds for a site's remove): the function is forgotten all the same,
    so its template and instances must stop, not run on with no pool to stop them."""
    await harness.deploy("given-up", SLOW, 'isolation = "reuse"\n')
    pool = harness.rt.pool("given-up")
    call = asyncio.ensure_future(harness.invoke("given-up", b'{"sleep": 30}'))
    async with asyncio.timeout(10):
        while not pool.stats()["busy"] or pool.template_pid <= 0:
            await asyncio.sleep(0.01)
    template = os.pidfd_open(pool.template_pid)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(harness.rt.remove("given-up"), 0.1)
        assert pool.state == "closed"
        readable, _, _ = select.select([template], [], [], 10)
        assert readable, "the template of the removed function still runs"
    finally:
        os.close(template)
    with pytest.raises(InfraError):
        await call


CONCURRENT = """
import asyncio, os, threading, time

def handler(event, context):
    print("serving", context.invocation_id)
    time.sleep(0.3)
    return {"pid": os.getpid(), "thread": threading.get_ident()}
"""

ASYNC_CONCURRENT = """
import asyncio, os

async def handler(event, context):
    print("serving", context.invocation_id)
    await asyncio.sleep(0.3)
    return os.getpid()
"""


@pytest.mark.parametrize("code", [CONCURRENT, ASYNC_CONCURRENT], ids=["threads", "asyncio"])
async def test_reuse_instance_serves_its_concurrency_at_once(harness: Harness, code: str) -> None:
    name = "conc-" + ("async" if "async def" in code else "sync")
    await harness.deploy(name, code, 'isolation = "reuse"\n[resources]\nconcurrency = 4\n[scaling]\nmax = 1\n')
    started = time.monotonic()
    results = await asyncio.gather(*(harness.invoke(name, invocation_id=f"{name}-{i}") for i in range(8)))
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results), [r.error for r in results]
    pids = {json.dumps(json.loads(r.output)["pid"] if b"pid" in r.output else json.loads(r.output)) for r in results}
    assert len(pids) == 1, "one instance served them all"
    assert elapsed < 0.3 * 8 / 2, "four at a time, not one"
    for i, r in enumerate(results):
        assert r.logs == f"serving {name}-{i}\n", "logs stay with their invocation"


async def test_a_restart_that_fails_before_the_template_is_asked_for_does_not_leave_the_pool_starting(
    harness: Harness,
) -> None:
    """Scaled to zero, the template starts again at the next call.  When that start
    fails before the zygote is asked (here: a file stands where the function's scratch
    dir is made), that call fails, and the pool is cold: the next call starts it again,
    and does not find it still starting and fail with "the template exited while
    starting" (no template was started) when the channel's EOF comes."""
    await harness.deploy("respawn", SLOW, 'isolation = "reuse"\n')
    assert (await harness.invoke("respawn", b'{"sleep": 0}')).ok
    pool = harness.rt.pool("respawn")
    pool.stop_template()  # as scale-to-zero does
    scratch = harness.rt.scratch_root / pool.key
    shutil.rmtree(scratch)
    scratch.write_text("")
    try:
        with pytest.raises(InfraError, match=f"could not make the scratch dir of 'respawn' at {scratch}: File exists"):
            await harness.invoke("respawn", b'{"sleep": 0}')
    finally:
        scratch.unlink()
    assert pool.state == "cold"
    r = await harness.invoke("respawn", b'{"sleep": 0}')
    assert r.ok, r.error


async def test_a_stopped_template_is_killed_before_its_channel_ends(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A template takes its channel's end for a shutdown: it stops its instances and
    removes its scratch dir.  stop_template (scale to zero, a remove) kills it instead;
    were the channel closed first, a template given the CPU in between (a busy host)
    would remove the scratch dir after stop_template returned, under whatever the runtime
    put there next (the next template's scratch dir; the test above: its file)."""
    await harness.deploy("killed-first", SLOW, 'isolation = "reuse"\n')
    assert (await harness.invoke("killed-first", b'{"sleep": 0}')).ok
    pool = harness.rt.pool("killed-first")
    scratch = harness.rt.scratch_root / pool.key
    chan = pool._chan
    assert chan is not None and pool.template_pid > 0 and scratch.is_dir()
    template = os.pidfd_open(pool.template_pid)
    close = chan.close

    def close_and_let_the_template_run() -> None:
        close()
        # The busy host's untimely switch, made certain: the template runs until it exits.
        readable, _, _ = select.select([template], [], [], 10)
        assert readable, "the template did not exit"

    monkeypatch.setattr(chan, "close", close_and_let_the_template_run)
    try:
        pool.stop_template()
    finally:
        os.close(template)
    assert scratch.is_dir(), "the template ran on after stop_template and removed its scratch dir"


async def test_a_strict_child_whose_caller_gave_up_after_it_answered_is_never_offered_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A strict child serves one invocation.  Its caller may give up after the child
    answered and before the caller resumed: the child served, and must not be offered
    to the next call (which would reach a used, exiting child, and be saved only by
    the connection reset telling it that it never ran)."""
    await harness.deploy("once", SLOW, 'isolation = "strict"\n[scaling]\nprefork = 1\n')
    pool = harness.rt.pool("once")
    assert (await harness.invoke("once", b'{"sleep": 0}')).ok
    loop = asyncio.get_running_loop()
    used: list[InstanceConnection] = []
    seen_idle: list[bool] = []
    request = InstanceConnection.request

    def cancel_once_answered(
        conn: InstanceConnection, req: p.Invoke, body: bytes, on_start: Callable[[], None] | None = None
    ) -> asyncio.Future[tuple[p.Done, bytes]]:
        fut = request(conn, req, body, on_start)
        if req.invocation_id == "given-up":
            used.append(conn)
            # Registered before its caller awaits it: runs when the answer is set, before
            # the caller resumes; the caller is then cancelled with its answer in hand.
            fut.add_done_callback(lambda _: call.cancel())
        return fut

    monkeypatch.setattr(InstanceConnection, "request", cancel_once_answered)
    call = loop.create_task(harness.invoke("once", b'{"sleep": 0}', invocation_id="given-up"))
    # Looked at as soon as the call ends, before the child's exit can unpark it.
    call.add_done_callback(lambda _: seen_idle.append(any(i.conn is used[0] for i in pool._queue.idle)))
    with pytest.raises(asyncio.CancelledError):
        await call
    monkeypatch.undo()
    assert used and used[0].pending == {}, "the child answered before its caller was cancelled"
    assert seen_idle == [False], "the strict child that served was offered again"
    r = await harness.invoke("once", b'{"sleep": 0}')
    assert r.ok, r.error
