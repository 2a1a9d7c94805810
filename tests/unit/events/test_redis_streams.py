"""The Redis Streams source against a real redis-server: entries become
invocations, are acknowledged only once queued, and are read again after a
failure without running twice."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from events_helpers import metric, wait_finished

from spanfaas.config import EventSettings, RedisStreamConfig
from spanfaas.gateway.app import Gateway
from spanfaas.store import SQLiteStore

GROUP = "spanfaas"


@pytest.fixture
def stream() -> str:
    return "orders-" + uuid.uuid4().hex[:8]


@pytest.fixture
def event_settings(redis_url: str, stream: str) -> EventSettings:
    cfg = RedisStreamConfig(name="orders", stream=stream, url=redis_url, block=0.05, start="all", consumer="test")
    return EventSettings(backoff=0.01, retries=1, redis=[cfg])


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


async def invocations(client: httpx.AsyncClient, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        views = (await client.get("/v1/invocations", params={"function": "orders", "limit": 100})).json()["invocations"]
        if len(views) >= n and all(v["status"] == "succeeded" for v in views) or time.monotonic() > deadline:
            return await wait_finished(client, [v["id"] for v in views])
        await asyncio.sleep(0.02)


async def pending(r: redis.Redis, stream: str) -> int:
    return int(r.xpending(stream, GROUP)["pending"])


async def test_entries_become_invocations(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, gateway: Gateway
) -> None:
    await deploy("orders", "[[triggers]]\n")
    plain = r.xadd(stream, {"order": "1", "total": "42"})
    r.xadd(stream, {"specversion": "1.0", "id": "ce-7", "source": "/shop", "type": "com.example.order",
                    "datacontenttype": "application/json", "data": json.dumps({"total": 7})})  # fmt: skip
    r.xadd(stream, {"cloudevent": json.dumps({"specversion": "1.0", "id": "ce-8", "source": "/shop", "type": "t", "data": 8})})
    r.xadd(stream, {"specversion": "1.0", "source": "/shop", "type": "no id"})  # rejected, acknowledged
    views = await invocations(client, 3)
    by_id = {v["result"]["context_event"]["id"]: v["result"] for v in views}
    assert set(by_id) == {plain, "ce-7", "ce-8"}
    assert by_id[plain]["event"]["data"] == {"order": "1", "total": "42"}
    assert by_id[plain]["context_event"]["source"] == f"redis/{stream}"
    assert by_id["ce-7"]["event"]["data"] == {"total": 7} and by_id["ce-8"]["event"]["data"] == 8
    deadline = time.monotonic() + 5
    while await pending(r, stream) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await pending(r, stream) == 0  # everything acknowledged, the rejected entry too
    text = (await client.get("/metrics")).text
    assert metric(text, "spanfaas_events_received_total", "redis") == 4
    assert metric(text, "spanfaas_events_rejected_total", "redis") == 1
    assert metric(text, "spanfaas_events_delivered_total", "redis") == 3


async def test_an_entry_with_data_base64_delivers_its_bytes(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str
) -> None:
    """An entry of CloudEvent fields whose data is binary (``data_base64``, as in structured
    mode) reached the function without any data: the field was dropped, not decoded."""
    await deploy("orders", "[[triggers]]\n")
    r.xadd(stream, {"specversion": "1.0", "id": "img-1", "source": "/cam", "type": "com.example.photo",
                    "datacontenttype": "image/png", "data_base64": base64.b64encode(b"\x89PNG\x00").decode()})  # fmt: skip
    r.xadd(stream, {"specversion": "1.0", "id": "img-2", "source": "/cam", "type": "t", "data_base64": "not base64!"})
    [view] = await invocations(client, 1)
    event = view["result"]["event"]
    assert event["id"] == "img-1" and base64.b64decode(event["data_base64"]) == b"\x89PNG\x00" and "data" not in event


async def test_same_event_id_twice_runs_once(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str
) -> None:
    await deploy("orders", "[[triggers]]\n")
    for _ in range(2):
        r.xadd(stream, {"specversion": "1.0", "id": "dup", "source": "/shop", "type": "t"})
    r.xadd(stream, {"specversion": "1.0", "id": "last", "source": "/shop", "type": "t"})
    views = await invocations(client, 2)
    await asyncio.sleep(0.2)
    views = await invocations(client, 2)
    assert sorted(v["result"]["context_event"]["id"] for v in views) == ["dup", "last"]


async def test_not_acknowledged_when_the_store_fails_then_read_again(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, gateway: Gateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await deploy("orders", "[[triggers]]\n")
    real = gateway.store.admit
    calls = {"n": 0}

    def failing_admit(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk on fire")
        return real(*args, **kw)

    monkeypatch.setattr(gateway.store, "admit", failing_admit)
    r.xadd(stream, {"specversion": "1.0", "id": "e1", "source": "/shop", "type": "t"})
    deadline = time.monotonic() + 5
    while calls["n"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert await pending(r, stream) == 1  # read, not acknowledged
    [view] = await invocations(client, 1)
    assert view["result"]["context_event"]["id"] == "e1" and calls["n"] >= 2


REFUSE_BAD = {
    # the invocation of the event 'bad' (a value of it the store cannot hold)
    "invocation": "CREATE TRIGGER refuse_bad BEFORE INSERT ON invocations "
    "WHEN instr(CAST(NEW.payload AS TEXT), '\"id\":\"bad\"') > 0 "
    "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: bad'); END",
    # its (source, id), as the de-duplication window records it
    "seen": "CREATE TRIGGER refuse_bad BEFORE INSERT ON events_seen WHEN NEW.id = 'bad' "
    "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: bad'); END",
}


@pytest.mark.parametrize("refused", sorted(REFUSE_BAD))
async def test_an_entry_the_store_refuses_is_kept_as_a_dead_letter_and_the_others_of_its_read_queued(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, store: SQLiteStore,
    caplog: pytest.LogCaptureFixture, refused: str,
) -> None:  # fmt: skip
    """The store refused one event of a read (RecordRefused): the whole read failed, was not
    acknowledged, and was read and refused again, for ever; its good entries never ran.  Then it
    was acknowledged and only logged: the event was gone, with nothing to list or replay.  Now
    its invocation is a dead letter, with the reason, replayed once the cause is fixed."""
    await deploy("orders", "[[triggers]]\n")
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_BAD[refused])
        with r.pipeline(transaction=True) as pipe:  # all at once: the reader gets them in one read
            for id in ("e1", "bad", "e2"):
                pipe.xadd(stream, {"specversion": "1.0", "id": id, "source": "/shop", "type": "t", "data": json.dumps(id)})
            [_, bad, _] = pipe.execute()
        views = await invocations(client, 2, timeout=5)
        assert sorted(v["result"]["context_event"]["id"] for v in views) == ["e1", "e2"], caplog.text[-2000:]
        deadline = time.monotonic() + 5
        while await pending(r, stream) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await pending(r, stream) == 0  # acknowledged, the refused one too: never read again
        [letter] = (await client.get("/v1/events/dlq")).json()["dead_letters"]
        assert letter["function"] == "orders" and letter["proxy"] == "redis" and letter["attempts"] == 0
        assert letter["event"]["id"] == "bad" and letter["event"]["source"] == "/shop"
        assert letter["error"]["type"] == "ValueRefused" and "CHECK constraint failed: bad" in letter["error"]["message"]
        if refused == "invocation":  # replayed before the cause is fixed: refused again, and kept
            again = await client.post(f"/v1/events/dlq/{letter['id']}/replay")
            assert again.status_code == 422 and again.json()["type"].endswith("/value-refused"), again.text
            assert "CHECK constraint failed: bad" in again.json()["detail"] and "kept" in again.json()["detail"], again.text
            assert [d["id"] for d in (await client.get("/v1/events/dlq")).json()["dead_letters"]] == [letter["id"]]
        db.execute("DROP TRIGGER refuse_bad")  # the cause fixed: replayed, it runs
    finally:
        db.close()
    said = f"entry {bad} refused by the store (acknowledged, kept as dead letter {letter['id']}: `spanfaas events dlq ls`)"
    assert said in caplog.text and caplog.text.count(said) == 1, caplog.text[-2000:]
    text = (await client.get("/metrics")).text
    assert metric(text, "spanfaas_events_rejected_total", "redis") == 1
    assert metric(text, "spanfaas_events_dead_lettered_total", "redis") == 1
    replayed = await client.post(f"/v1/events/dlq/{letter['id']}/replay")
    assert replayed.status_code == 202, replayed.text
    views = await invocations(client, 3, timeout=5)
    ran = {v["result"]["context_event"]["id"]: v["result"]["event"]["data"] for v in views}
    assert ran == {"e1": "e1", "bad": "bad", "e2": "e2"}
    assert (await client.get("/v1/events/dlq")).json()["dead_letters"] == []


async def test_an_entry_that_is_no_event_is_kept_as_a_dead_letter_with_its_fields_and_reason(
    client: httpx.AsyncClient, deploy: Callable[..., Any], redis_url: str, stream: str, r: redis.Redis,
) -> None:  # fmt: skip
    """An entry that could not be turned into an event was acknowledged and only logged: gone,
    with nothing to list.  Now it is a dead letter (no function) with its raw fields and the
    reason; it cannot be replayed, and replaying it says why."""
    await deploy("orders", "[[triggers]]\n")
    no_id = r.xadd(stream, {"specversion": "1.0", "source": "/shop", "type": "t"})
    raw = redis.Redis.from_url(redis_url)
    try:
        binary = raw.xadd(stream, {b"order": b"\xff\xfe"}).decode()
    finally:
        raw.close()
    r.xadd(stream, {"specversion": "1.0", "id": "ok", "source": "/shop", "type": "t"})
    [view] = await invocations(client, 1)
    assert view["result"]["context_event"]["id"] == "ok"
    deadline = time.monotonic() + 5
    while await pending(r, stream) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await pending(r, stream) == 0
    letters = {d["event"]["id"]: d for d in (await client.get("/v1/events/dlq")).json()["dead_letters"]}
    assert set(letters) == {no_id, binary}
    for d in letters.values():
        assert d["function"] == "" and d["proxy"] == "redis" and d["attempts"] == 0 and d["trigger"] == ""
        assert d["event"]["source"] == f"redis/{stream}" and d["event"]["stream"] == stream
        assert d["error"]["type"] == "InvalidEvent" and "cannot be replayed" in d["error"]["message"]
    assert letters[no_id]["event"]["fields"] == {"specversion": "1.0", "source": "/shop", "type": "t"}
    assert "'id'" in letters[no_id]["error"]["message"] or "id" in letters[no_id]["error"]["message"]
    assert letters[binary]["event"]["fields"] == {"order": {"base64": base64.b64encode(b"\xff\xfe").decode()}}
    assert "UTF-8" in letters[binary]["error"]["message"]
    replay = await client.post(f"/v1/events/dlq/{letters[no_id]['id']}/replay")
    assert replay.status_code == 422 and "cannot be replayed" in replay.json()["detail"], replay.text
    text = (await client.get("/metrics")).text
    assert metric(text, "spanfaas_events_rejected_total", "redis") == 2
    assert metric(text, "spanfaas_events_dead_lettered_total", "redis") == 2


@pytest.fixture
def busy_timeout() -> float:
    return 30.0


@pytest.fixture
def store(settings: Any, busy_timeout: float) -> Iterator[SQLiteStore]:
    s = SQLiteStore(settings.data_path / "spanfaas.db", busy_timeout=busy_timeout)
    yield s
    s.close()


@pytest.mark.parametrize("busy_timeout", [0.1])
async def test_the_dead_letter_of_an_entry_the_store_cannot_take_now_leaves_it_pending(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, store: SQLiteStore,
    caplog: pytest.LogCaptureFixture, gateway: Gateway,
) -> None:  # fmt: skip
    """The store fails (here: locked by another process past its busy timeout, a real
    ``StoreUnavailable``) as the dead letter of an entry that is no event is written: the
    entry is not acknowledged, so it is read again, and kept once the store is back."""
    await deploy("orders", "[[triggers]]\n")
    await asyncio.wait_for(gateway.events.streams[0].connected.wait(), 5)  # it knows its group: it only reads now
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")  # the store cannot be written
        bad = r.xadd(stream, {"specversion": "1.0", "source": "/shop", "type": "no id"})
        deadline = time.monotonic() + 5
        while not ("could not queue events (StoreUnavailable" in caplog.text and await pending(r, stream)):
            assert time.monotonic() < deadline, caplog.text[-2000:]
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # read again and again meanwhile
        assert await pending(r, stream) == 1  # read, not acknowledged
        assert (await client.get("/v1/events/dlq")).json()["dead_letters"] == []
        db.execute("ROLLBACK")
    finally:
        db.close()
    deadline = time.monotonic() + 5
    while await pending(r, stream) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await pending(r, stream) == 0
    [letter] = (await client.get("/v1/events/dlq")).json()["dead_letters"]
    assert letter["event"]["id"] == bad and letter["error"]["type"] == "InvalidEvent"


async def test_a_refused_event_whose_dead_letter_the_store_fails_to_write_is_read_again(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, store: SQLiteStore,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The store refuses an event (its de-duplication row) and then fails, for a reason other than
    the value, to write the dead letter kept in its stead (a real SQLite error: a trigger on the
    dead letters whose table is gone): the read is not acknowledged, the event is not lost; once
    the store writes again it is kept as a dead letter, and its good neighbours ran once."""
    await deploy("orders", "[[triggers]]\n")
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_BAD["seen"])
        db.execute("CREATE TABLE broken (x)")
        db.execute("CREATE TRIGGER dead_letters_fail BEFORE INSERT ON dead_letters BEGIN INSERT INTO broken VALUES (1); END")
        db.execute("DROP TABLE broken")  # every dead letter's insert now fails: "no such table"
        with r.pipeline(transaction=True) as pipe:
            for id in ("e1", "bad", "e2"):
                pipe.xadd(stream, {"specversion": "1.0", "id": id, "source": "/shop", "type": "t", "data": json.dumps(id)})
            pipe.execute()
        deadline = time.monotonic() + 5
        while "no such table" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert "could not queue events (OperationalError: no such table" in caplog.text, caplog.text[-2000:]
        assert await pending(r, stream) == 3  # not acknowledged: read again
        assert (await client.get("/v1/events/dlq")).json()["dead_letters"] == []
        db.execute("DROP TRIGGER dead_letters_fail")
        deadline = time.monotonic() + 5
        while await pending(r, stream) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await pending(r, stream) == 0
        [letter] = (await client.get("/v1/events/dlq")).json()["dead_letters"]
        assert letter["event"]["id"] == "bad" and "CHECK constraint failed: bad" in letter["error"]["message"]
        db.execute("DROP TRIGGER refuse_bad")
    finally:
        db.close()
    views = await invocations(client, 2, timeout=5)
    await asyncio.sleep(0.2)
    views = await invocations(client, 2, timeout=5)
    assert sorted(v["result"]["context_event"]["id"] for v in views) == ["e1", "e2"]


REFUSE_LETTER = (  # a dead letter whose data holds 'poison' (a value of it the store cannot hold)
    "CREATE TRIGGER refuse_letter BEFORE INSERT ON dead_letters WHEN instr(CAST(NEW.payload AS TEXT), 'poison') > 0 "
    "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: poison letter'); END"
)


@pytest.mark.parametrize("kind", ["no event", "refused event"])
async def test_an_entry_whose_dead_letter_the_store_refuses_is_kept_without_its_data(
    client: httpx.AsyncClient, deploy: Callable[..., Any], r: redis.Redis, stream: str, store: SQLiteStore,
    caplog: pytest.LogCaptureFixture, kind: str,
) -> None:  # fmt: skip
    """An entry the store refused (it was no event, or its event was refused) and then refused
    the dead letter of too (a value of its data: it always will) was acknowledged and lost, only
    logged.  Now it is kept without its data: listed, with why, and never replayed empty."""
    await deploy("orders", "[[triggers]]\n")
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(REFUSE_LETTER)
        if kind == "no event":
            bad = r.xadd(stream, {"specversion": "1.0", "source": "/shop", "type": "t", "note": "poison"})
        else:
            db.execute(REFUSE_BAD["seen"])
            r.xadd(stream, {"specversion": "1.0", "id": "bad", "source": "/shop", "type": "t", "data": json.dumps("poison")})
        r.xadd(stream, {"specversion": "1.0", "id": "ok", "source": "/shop", "type": "t"})
        [view] = await invocations(client, 1)
        assert view["result"]["context_event"]["id"] == "ok"
        deadline = time.monotonic() + 5
        while await pending(r, stream) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert await pending(r, stream) == 0  # acknowledged: the stream goes on
        letters = (await client.get("/v1/events/dlq")).json()["dead_letters"]
        assert len(letters) == 1, caplog.text[-2000:]
        [letter] = letters
    finally:
        db.close()
    assert letter["function"] == "" and letter["proxy"] == "redis"  # cannot be replayed: its data is not kept
    assert letter["event"]["id"] == (bad if kind == "no event" else "bad") and letter["event"]["source"] == (
        f"redis/{stream}" if kind == "no event" else "/shop"
    )
    message = letter["error"]["message"]
    assert "CHECK constraint failed: poison letter" in message and "without its data" in message, message
    if kind == "refused event":
        assert "CHECK constraint failed: bad" in message and "'orders'" in message, message
    replay = await client.post(f"/v1/events/dlq/{letter['id']}/replay")
    assert replay.status_code == 422 and "cannot be replayed" in replay.json()["detail"], replay.text
    assert "lost" not in caplog.text, caplog.text[-2000:]
    assert f"kept without its data as dead letter {letter['id']}" in caplog.text, caplog.text[-2000:]
    text = (await client.get("/metrics")).text
    assert metric(text, "spanfaas_events_dead_lettered_total", "redis") == 1


class _Sink:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def publish(self, proxy: str, events: Any, *, keep_refused: bool = False) -> list[Any]:
        self.events += [e.get_id() for e in events]
        return []


async def test_entries_left_pending_by_a_dead_consumer_are_taken_over(
    redis_url: str, stream: str, r: redis.Redis, store: SQLiteStore
) -> None:
    from prometheus_client import CollectorRegistry

    from spanfaas.events.metrics import EventMetrics
    from spanfaas.events.redis_streams import RedisStreamSource

    metrics = EventMetrics(CollectorRegistry())
    cfg = lambda consumer: RedisStreamConfig(
        name="s", stream=stream, url=redis_url, block=0.05, start="all", consumer=consumer, claim_idle=0.2
    )
    dead = RedisStreamSource(cfg("dead"), metrics, store, stall_at="redis.before-admit")
    dead_sink = _Sink()
    task = asyncio.create_task(dead.run(dead_sink))
    await asyncio.wait_for(dead.connected.wait(), 5)
    r.xadd(stream, {"specversion": "1.0", "id": "e1", "source": "/s", "type": "t"})
    deadline = time.monotonic() + 5
    while await pending(r, stream) == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # into the stall (cancelling inside a redis-py read is not reliable)
    task.cancel()  # "dies" holding the entry, unacknowledged
    await asyncio.gather(task, return_exceptions=True)
    assert dead_sink.events == [] and await pending(r, stream) == 1

    alive = RedisStreamSource(cfg("alive"), metrics, store)
    sink = _Sink()
    task = asyncio.create_task(alive.run(sink))
    try:
        deadline = time.monotonic() + 5
        while (sink.events != ["e1"] or await pending(r, stream)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sink.events == ["e1"] and await pending(r, stream) == 0
    finally:
        alive.stop()
        await asyncio.wait_for(task, 5)


async def test_every_entry_a_dead_consumer_left_pending_is_taken_over_page_after_page(
    redis_url: str, stream: str, r: redis.Redis, store: SQLiteStore
) -> None:
    """XAUTOCLAIM takes ``batch`` entries at a time and answers a cursor to go on from; the
    reader took the first page only, then waited ``claim_idle / 2`` (30 s by default) to scan
    again from the start: a backlog left by a dead consumer came back a page per half minute."""
    from prometheus_client import CollectorRegistry

    from spanfaas.events.metrics import EventMetrics
    from spanfaas.events.redis_streams import RedisStreamSource

    ids = [f"e{i}" for i in range(7)]
    for i in ids:
        r.xadd(stream, {"specversion": "1.0", "id": i, "source": "/s", "type": "t"})
    r.xgroup_create(stream, GROUP, id="0")
    entries = [e for _, items in r.xreadgroup(GROUP, "dead", {stream: ">"}) for e, _ in items]
    r.xclaim(stream, GROUP, "dead", 0, entries, idle=3_600_000, justid=True)  # "dead" for an hour, holding all 7
    assert await pending(r, stream) == 7

    cfg = RedisStreamConfig(name="s", stream=stream, url=redis_url, block=0.05, consumer="alive", batch=2, claim_idle=60)
    alive = RedisStreamSource(cfg, EventMetrics(CollectorRegistry()), store)
    sink = _Sink()
    task = asyncio.create_task(alive.run(sink))
    try:
        deadline = time.monotonic() + 5
        while (len(sink.events) < 7 or await pending(r, stream)) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sorted(sink.events) == ids and await pending(r, stream) == 0
    finally:
        alive.stop()
        await asyncio.wait_for(task, 5)
