"""Pipelining pieces: the room policy, coalesced writes, which requests a loss
leaves unstarted, and answers batched by the instance."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import InstanceConnection, InstanceLost
from spanfaas.runtime.pipelining import BUDGET_MS, DEPTH, Pipelining


def test_room_grows_while_calls_are_short_and_shrinks_at_once_on_a_slow_one() -> None:
    pl = Pipelining(2)
    assert pl.room == 2  # nothing measured yet
    pl.observe(0.01)
    assert pl.room == 2 + DEPTH
    pl.observe(BUDGET_MS / 2)
    assert pl.room == 2 + 4  # two slots work off four such calls within the budget
    pl.observe(BUDGET_MS * 20)
    assert pl.room == 2
    for _ in range(5):
        pl.observe(0.01)
    assert pl.room == 2  # falls slowly: a few fast calls do not forget a slow one
    for _ in range(40):
        pl.observe(0.01)
    assert pl.room == 2 + DEPTH


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writelines(self, parts: list[Any]) -> None:
        self.writes.append(b"".join(bytes(x) for x in parts))

    def close(self) -> None:
        pass


def _invoke(i: int) -> p.Invoke:
    return p.Invoke(id=i, invocation_id=f"inv-{i}", content_type="application/json", deadline=0.0)


def test_requests_of_one_loop_turn_go_out_in_one_write() -> None:
    async def run() -> None:
        conn = InstanceConnection(lambda: None)
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        for i in range(1, 4):
            conn.request(_invoke(i), b"{}")
        assert transport.writes == []
        await asyncio.sleep(0)
        assert len(transport.writes) == 1
        decoder = msgspec.msgpack.Decoder(p.InstanceRequest)
        wire, ids = transport.writes[0], []
        while wire:
            hlen, blen = p.FRAME.unpack_from(wire)
            ids.append(decoder.decode(wire[p.FRAME.size : p.FRAME.size + hlen]).id)
            wire = wire[p.FRAME.size + hlen + blen :]
        assert ids == [1, 2, 3]

    asyncio.run(run())


@pytest.mark.parametrize("slots", [1, 2])
def test_a_lost_connection_tells_which_requests_never_started(slots: int) -> None:
    async def run() -> None:
        conn = InstanceConnection(lambda: None, slots)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        sent = [conn.request(_invoke(i), b"") for i in range(1, 4)]
        await asyncio.sleep(0)  # written
        assert [conn.running(i) for i in range(1, 4)] == [i <= slots for i in range(1, 4)]
        unsent = conn.request(_invoke(4), b"")  # still in this turn's batch
        conn.connection_lost(None)
        started = []
        for fut in [*sent, unsent]:
            exc = fut.exception()
            assert isinstance(exc, InstanceLost)
            started.append(exc.started)
        assert started == [True] * slots + [False] * (4 - slots)

    asyncio.run(run())


def test_replies_are_matched_by_id_in_any_order() -> None:
    async def run() -> None:
        conn = InstanceConnection(lambda: None, 4)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        futs = {i: conn.request(_invoke(i), b"") for i in range(1, 5)}
        wire = b"".join(b"".join(bytes(x) for x in p.encode(p.Done(id=i), b"%d" % i)) for i in (3, 1, 4, 2))
        buf = conn.get_buffer(len(wire))
        buf[: len(wire)] = wire
        conn.buffer_updated(len(wire))
        for i, fut in futs.items():
            done, body = fut.result()
            assert done.id == i and body == b"%d" % i

    asyncio.run(run())


def test_a_request_on_a_connection_already_lost_never_started() -> None:
    # A waiting call handed an instance that is lost before the call's task runs:
    # the request never reached it, so the pool must run it elsewhere.
    async def run() -> None:
        conn = InstanceConnection(lambda: None)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        conn.connection_lost(None)
        exc = conn.request(_invoke(1), b"").exception()
        assert isinstance(exc, InstanceLost) and exc.started is False
        unconnected = InstanceConnection(lambda: None)
        exc = unconnected.request(_invoke(1), b"").exception()
        assert isinstance(exc, InstanceLost) and exc.started is False

    asyncio.run(run())


def _reply(conn: InstanceConnection, i: int) -> None:
    wire = b"".join(bytes(x) for x in p.encode(p.Done(id=i), b""))
    conn.get_buffer(len(wire))[: len(wire)] = wire
    conn.buffer_updated(len(wire))


def _ids(wire: bytes) -> list[int]:
    decoder = msgspec.msgpack.Decoder(p.InstanceRequest)
    ids = []
    while wire:
        hlen, blen = p.FRAME.unpack_from(wire)
        ids.append(decoder.decode(wire[p.FRAME.size : p.FRAME.size + hlen]).id)
        wire = wire[p.FRAME.size + hlen + blen :]
    return ids


def test_a_cancelled_request_still_held_is_never_sent() -> None:
    # The caller of a request held behind a busy slot was cancelled (its own
    # timeout, a client gone): the instance must not run it later.
    async def run() -> None:
        conn = InstanceConnection(lambda: None, 1)
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        first = conn.request(_invoke(1), b"")
        await asyncio.sleep(0)
        assert [_ids(w) for w in transport.writes] == [[1]]
        held = [conn.request(_invoke(i), b"") for i in (2, 3, 4)]  # the slot is busy: held
        held[0].cancel()
        held[2].cancel()
        await asyncio.sleep(0)
        assert len(transport.writes) == 1
        _reply(conn, 1)  # the slot frees: what was held goes out, minus the cancelled
        assert first.done()
        await asyncio.sleep(0)
        assert [_ids(w) for w in transport.writes] == [[1], [3]]
        assert list(conn.pending) == [3] and conn.running(3)
        _reply(conn, 3)
        assert held[1].result()[0].id == 3 and not conn.pending
        conn.connection_lost(None)  # nothing left to fail

    asyncio.run(run())
