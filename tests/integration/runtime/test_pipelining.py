"""Pipelining: short calls queue on a reuse instance's connection behind the
ones it runs; replies find their callers; a lost instance fails what ran and
reruns what only waited."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from spanfaas.errors import InfraError
from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

ECHO = """
import os, time

def handler(event, context):
    what = event.get("do")
    if what == "exit":
        os._exit(3)
    if what == "sleep":
        time.sleep(event["s"])
    if what == "spin":
        while True:
            pass
    return {"i": event.get("i"), "pid": os.getpid()}
"""


async def _warm(harness: Harness, name: str, calls: int = 5) -> None:
    """Fast calls first: pipelining starts once the calls are known to be short.

    At least ``calls`` of them; more while the average is still high (a call the
    loaded machine preempted counts as long at once, and the average falls slowly)."""
    for i in range(500):
        r = await harness.invoke(name, json.dumps({"i": i}).encode())
        assert r.ok, r.error
        if i + 1 >= calls and harness.rt.pool(name).stats()["room"] > 1:
            return
    raise AssertionError(f"pipelining never started: {harness.rt.pool(name).stats()}")


async def test_pipelined_replies_find_their_callers(harness: Harness) -> None:
    await harness.deploy("pipe-echo", ECHO, 'isolation = "reuse"\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-echo")
    for _ in range(3):
        results = await asyncio.gather(*(harness.invoke("pipe-echo", json.dumps({"i": i}).encode()) for i in range(200)))
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
        outs = [json.loads(r.output) for r in results]
        assert [o["i"] for o in outs] == list(range(200))
        assert len({o["pid"] for o in outs}) == 1  # one instance served them all, several at a time
    assert harness.rt.pool("pipe-echo").stats()["waiting"] == 0


async def test_out_of_order_replies_on_a_concurrent_instance(harness: Harness) -> None:
    await harness.deploy("pipe-conc", ECHO, 'isolation = "reuse"\n[resources]\nconcurrency = 4\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-conc")
    sleeps = [0.3, 0.0, 0.2, 0.1, 0.0, 0.05]
    order: list[int] = []

    async def call(i: int, s: float) -> dict[str, int]:
        r = await harness.invoke("pipe-conc", json.dumps({"do": "sleep", "s": s, "i": i}).encode())
        assert r.ok, r.error
        order.append(i)
        return dict(json.loads(r.output))

    outs = await asyncio.gather(*(call(i, s) for i, s in enumerate(sleeps)))
    assert [o["i"] for o in outs] == list(range(len(sleeps)))
    assert order[-1] == 0 and order.index(1) < order.index(3) < order.index(2)  # answered as they finished


async def test_crash_fails_the_call_that_ran_and_reruns_the_queued_ones(harness: Harness) -> None:
    await harness.deploy("pipe-crash", ECHO, 'isolation = "reuse"\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-crash")
    before = json.loads((await harness.invoke("pipe-crash", b'{"i": -1}')).output)["pid"]
    calls = [harness.invoke("pipe-crash", b'{"do": "exit"}')]
    calls += [harness.invoke("pipe-crash", json.dumps({"i": i}).encode()) for i in range(5)]
    crashed, *queued = await asyncio.gather(*calls)
    assert crashed.error is not None and crashed.error.kind == "crashed" and crashed.error.exit_status == 3
    assert all(r.ok for r in queued), [r.error for r in queued if not r.ok]
    outs = [json.loads(r.output) for r in queued]
    assert [o["i"] for o in outs] == list(range(5))
    assert {o["pid"] for o in outs} != {before}  # they ran on the new instance
    r = await harness.invoke("pipe-crash", b'{"i": 9}')
    assert r.ok


async def test_crash_of_a_concurrent_instance_fails_every_running_call(harness: Harness) -> None:
    await harness.deploy("pipe-crash4", ECHO, 'isolation = "reuse"\n[resources]\nconcurrency = 3\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-crash4")
    running = [harness.invoke("pipe-crash4", b'{"do": "sleep", "s": 0.5}') for _ in range(2)]
    calls = [*running, harness.invoke("pipe-crash4", b'{"do": "exit"}')]
    calls += [harness.invoke("pipe-crash4", json.dumps({"i": i}).encode()) for i in range(4)]
    *ran, crashed, r0, r1, r2, r3 = await asyncio.gather(*calls)
    for r in (*ran, crashed):
        assert r.error is not None and r.error.kind == "crashed", r.error
    assert all(r.ok for r in (r0, r1, r2, r3))
    assert (await harness.invoke("pipe-crash4", b'{"i": 1}')).ok


async def test_timeout_with_calls_queued_behind(harness: Harness) -> None:
    await harness.deploy("pipe-spin", ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 1.0\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-spin")
    calls = [harness.invoke("pipe-spin", b'{"do": "spin"}')]
    calls += [harness.invoke("pipe-spin", json.dumps({"i": i}).encode()) for i in range(3)]
    spun, *queued = await asyncio.gather(*calls)
    assert spun.error is not None and spun.error.kind == "timeout"
    assert "ran past its 1s timeout" in spun.error.message
    # Same deadline as the call they waited behind: it passed for them too.
    for r in queued:
        assert r.error is not None and r.error.kind == "timeout"
        assert "waited behind others" in r.error.message
    assert (await harness.invoke("pipe-spin", b'{"i": 1}')).ok


async def test_nothing_queues_behind_a_call_that_turned_out_slow(harness: Harness) -> None:
    await harness.deploy(
        "pipe-slow", ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 1.0\n[scaling]\nmax = 2\nmin = 2\n'
    )
    await _warm(harness, "pipe-slow")
    pool = harness.rt.pool("pipe-slow")
    for _ in range(50):  # both instances up
        if pool.stats()["instances"] == 2:
            break
        await asyncio.sleep(0.05)
    slow = asyncio.ensure_future(harness.invoke("pipe-slow", b'{"do": "sleep", "s": 0.6}'))
    await asyncio.sleep(0.1)  # it has not answered for longer than pipelining waits
    fast = await asyncio.gather(*(harness.invoke("pipe-slow", json.dumps({"i": i}).encode()) for i in range(4)))
    assert all(r.ok for r in fast), [r.error for r in fast]
    done = await slow
    assert done.ok
    slow_pid = json.loads(done.output)["pid"]
    assert all(json.loads(r.output)["pid"] != slow_pid for r in fast)  # none waited behind it


async def test_a_burst_of_calls_that_turn_out_long_spreads_over_new_instances(harness: Harness) -> None:
    await harness.deploy("pipe-burst", ECHO, 'isolation = "reuse"\n[scaling]\nmax = 4\n')
    await _warm(harness, "pipe-burst", calls=3)  # short so far: pipelining is on
    results = await asyncio.gather(
        *(harness.invoke("pipe-burst", json.dumps({"do": "sleep", "s": 0.2, "i": i}).encode()) for i in range(16))
    )
    assert all(r.ok for r in results)
    # Piled on the one instance they found, they would all run there; the window lets
    # only a few queue on it, the others wait in the pool for the instances it starts.
    assert len({json.loads(r.output)["pid"] for r in results}) > 1


async def _three_queued_behind_a_sleeper(harness: Harness, name: str) -> tuple[Any, list[asyncio.Future[Any]]]:
    """One instance busy with a 5 s call, three short calls queued on its connection."""
    await harness.deploy(name, ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 20\n[scaling]\nmax = 1\n')
    await _warm(harness, name)
    calls = [asyncio.ensure_future(harness.invoke(name, b'{"do": "sleep", "s": 5}'))]
    calls += [asyncio.ensure_future(harness.invoke(name, json.dumps({"i": i}).encode())) for i in range(3)]
    await asyncio.sleep(0.1)
    pool = harness.rt.pool(name)
    assert pool.stats()["waiting"] == 3  # queued on the instance, behind the sleeping call
    return pool, calls


async def test_calls_queued_on_a_closed_pool_fail_at_once(harness: Harness) -> None:
    pool, calls = await _three_queued_behind_a_sleeper(harness, "pipe-close")
    pool.close()
    running, *queued = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert isinstance(running, InfraError) and "lost with the template" in str(running), running  # not the function's crash
    assert all(isinstance(q, InfraError) and "was removed" in str(q) for q in queued), queued


async def test_calls_queued_when_the_template_dies_run_on_a_new_one(harness: Harness) -> None:
    import os
    import signal

    pool, calls = await _three_queued_behind_a_sleeper(harness, "pipe-tmpl")
    os.kill(pool.template_pid, signal.SIGKILL)  # its instances go with it
    running, *queued = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert isinstance(running, InfraError) and "lost with the template" in str(running), running  # the platform's failure
    assert all(r.ok for r in queued), [r.error for r in queued]


async def test_answers_ahead_of_a_hanging_call_are_not_lost(harness: Harness) -> None:
    # Fast calls pipelined ahead of one that hangs past its timeout: their answers
    # must reach their callers (an answer held back for a batch would wait on the
    # hanging call and be reported as a timeout).
    await harness.deploy("pipe-hang", ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 1\n[scaling]\nmax = 1\n')
    await _warm(harness, "pipe-hang")
    fast = [asyncio.ensure_future(harness.invoke("pipe-hang", json.dumps({"i": i}).encode())) for i in range(6)]
    hang = asyncio.ensure_future(harness.invoke("pipe-hang", json.dumps({"do": "sleep", "s": 30}).encode()))
    results = await asyncio.gather(*fast)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
    r = await hang
    assert r.error is not None and r.error.kind == "timeout"


async def test_a_waiter_handed_an_instance_lost_before_it_ran_runs_on_another(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.deploy("pipe-handed", ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 10\n[scaling]\nmax = 1\n')
    pool = harness.rt.pool("pipe-handed")
    before = json.loads((await harness.invoke("pipe-handed", b'{"i": 0}')).output)["pid"]
    busy = asyncio.ensure_future(harness.invoke("pipe-handed", b'{"do": "sleep", "s": 0.3}'))
    await asyncio.sleep(0.1)  # it has not answered for a while: the next call waits in the pool
    waiting = asyncio.ensure_future(harness.invoke("pipe-handed", b'{"i": 1}'))
    await asyncio.sleep(0.05)
    assert len(pool._queue.waiters) == 1
    offer = pool._queue.offer

    def offer_then_lose(inst: Any, fresh: bool = False) -> None:
        offer(inst, fresh)  # hands the instance to the waiting call...
        monkeypatch.undo()
        inst.kill()  # ...which dies before that call's task runs
        assert inst.conn is not None
        inst.conn.connection_lost(None)

    monkeypatch.setattr(pool._queue, "offer", offer_then_lose)
    assert (await asyncio.wait_for(busy, 5)).ok
    r = await asyncio.wait_for(waiting, 5)
    assert r.ok, r.error  # it never ran: not a crash, a run on a new instance
    assert json.loads(r.output)["pid"] != before


NEXT = """
def handler(event, context):
    return {"i": event.get("i"), "version": 2}
"""


async def test_calls_left_on_a_replaced_version_whose_template_died_run_on_the_new_one(harness: Harness) -> None:
    import os
    import signal

    pool, calls = await _three_queued_behind_a_sleeper(harness, "pipe-redeploy")
    await asyncio.sleep(0.05)  # the sleeper has not answered for a while: the next call waits in the pool
    calls.append(asyncio.ensure_future(harness.invoke("pipe-redeploy", b'{"i": 3}')))
    await asyncio.sleep(0.05)
    assert len(pool._queue.waiters) == 1
    await harness.deploy("pipe-redeploy", NEXT, 'isolation = "reuse"\n')
    async with asyncio.timeout(5):
        while pool.state != "draining":
            await asyncio.sleep(0.005)
    os.kill(pool.template_pid, signal.SIGKILL)  # the old version can run nothing more
    running, *rest = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)  # not their 20 s timeout
    assert isinstance(running, InfraError) and "lost with the template" in str(running), running
    assert all(r.ok for r in rest), [r.error for r in rest]
    assert [json.loads(r.output) for r in rest] == [{"i": i, "version": 2} for i in range(4)]


async def test_a_rerun_is_not_refused_for_a_queue_that_filled_meanwhile(harness: Harness) -> None:
    name = "pipe-full"
    await harness.deploy(name, ECHO, 'isolation = "reuse"\n[resources]\ntimeout = 20\n[scaling]\nmax = 1\nqueue = 2\n')
    await _warm(harness, name)
    pool = harness.rt.pool(name)
    sleeper = asyncio.ensure_future(harness.invoke(name, b'{"do": "sleep", "s": 5}'))
    queued = asyncio.ensure_future(harness.invoke(name, b'{"i": 1}'))  # on the connection, behind it
    await asyncio.sleep(0.1)
    waiter = asyncio.ensure_future(harness.invoke(name, b'{"i": 2}'))  # in the pool
    await asyncio.sleep(0.05)
    assert pool.stats()["waiting"] == 2  # the queue is full
    pool.stop_template()  # as when it dies: the queued call must run again...
    late = asyncio.ensure_future(harness.invoke(name, b'{"i": 3}'))  # ...and this one took its place meanwhile
    ran, *rest = await asyncio.wait_for(asyncio.gather(sleeper, queued, waiter, late, return_exceptions=True), 10)
    assert isinstance(ran, InfraError) and "lost with the template" in str(ran), ran  # the platform's failure
    assert not any(isinstance(r, BaseException) for r in rest), rest
    assert all(r.ok for r in rest), [r.error for r in rest]
    assert sorted(json.loads(r.output)["i"] for r in rest) == [1, 2, 3]
