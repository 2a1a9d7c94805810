"""A pool's queue without processes: who gets an instance's room, and when a call is refused."""

from __future__ import annotations

import asyncio

import pytest

from spanfaas.errors import TooManyRequests
from spanfaas.runtime.handle import Instance
from spanfaas.runtime.queueing import Queue, Waiter


class _Conn:
    lost = False


def _ready(seq: int) -> Instance:
    inst = Instance(seq)
    inst.conn = _Conn()  # type: ignore[assignment]  # (take and give_back look at .lost only)
    inst.ready = True
    return inst


def _queue(slots: int = 1, limit: int = 2) -> Queue:
    return Queue("f", slots, limit, asyncio.get_running_loop())


async def test_a_full_queue_refuses_a_new_call_but_not_one_accepted_before() -> None:
    q = _queue(limit=1)
    q.waiters.append(Waiter(asyncio.get_running_loop(), 0.0))
    with pytest.raises(TooManyRequests, match=r"'f' has 1 invocation waiting \(scaling.queue = 1\)"):
        q.admit(accepted=False)
    q.admit(accepted=True)
    q.fail(RuntimeError("done"))


async def test_an_instance_offered_goes_to_the_first_call_still_waiting_and_is_not_parked() -> None:
    loop = asyncio.get_running_loop()
    q = _queue()
    gave_up, first, second = (Waiter(loop, loop.time() + 5) for _ in range(3))
    gave_up.cancel()
    q.waiters.extend([gave_up, first, second])
    inst = _ready(1)
    q.offer(inst)
    assert first.result() is inst and inst.active == 1
    assert list(q.waiters) == [second] and not q.idle  # one slot: nothing left to park
    q.release(inst)
    q.offer(inst)
    assert second.result() is inst
    q.release(inst)
    q.offer(inst)
    assert list(q.idle) == [inst] and q.take(loop.time() + 5) is inst and not q.idle


async def test_a_call_does_not_queue_behind_one_that_expires_later() -> None:
    """Its expiry would stop the instance and the call ahead that still has time."""
    loop = asyncio.get_running_loop()
    q = _queue(limit=10)
    inst = _ready(1)
    inst.answered = loop.time()
    assert q.hand(inst, loop.time() + 10)  # runs
    assert not q.hand(inst, loop.time() + 5)  # would wait on the connection, and expire first
    assert q.hand(inst, loop.time() + 20) and q.pipelined == 1  # waits on the connection
    q.release(inst)
    q.release(inst)
    assert q.pipelined == 0 and inst.active == 0


async def test_each_waiter_failed_with_a_class_gets_its_own_exception() -> None:
    loop = asyncio.get_running_loop()
    q = _queue()
    a, b = Waiter(loop, 0.0), Waiter(loop, 0.0)
    q.waiters.extend([a, b])
    q.fail(LookupError)
    assert isinstance(a.exception(), LookupError) and a.exception() is not b.exception()
    assert not q.waiters
