"""Redis Streams into a real gateway process: SIGKILL between reading entries
and queueing their invocations (and between queueing and acknowledging);
after a restart every event is delivered and runs exactly once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from spanfaas.events.testing import RedisServer
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = """
def handler(event, context):
    return {"id": context.event["id"], "data": event["data"]}
"""
N = 5


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not RedisServer.available():
        pytest.skip("redis-server not installed; `make test` (scripts/test-deps.sh) installs it")
    with RedisServer() as server:
        yield server.url


def setup(tmp_path: Path, redis_url: str, stall: str) -> tuple[GatewayProcess, str, Path]:
    stream = "orders-" + uuid.uuid4().hex[:8]
    config = tmp_path / "config.toml"
    config.write_text(
        f'[events]\nbackoff = 0.05\n[[events.redis]]\nname = "orders"\nstream = "{stream}"\nurl = "{redis_url}"\n'
        'block = 0.1\nconsumer = "gw"\nstart = "all"\n'
    )
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "orders"\nisolation = "reuse"\n[[triggers]]\nsource = "/shop"\n')
    gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_CONFIG": str(config), "SPANFAAS_TEST_STALL": stall})
    return gw, stream, fn


def wait_for(cond: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def runs(gw: GatewayProcess) -> list[dict[str, Any]]:
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=10) as c:
        views: list[dict[str, Any]] = c.get("/v1/invocations", params={"function": "orders", "limit": 100}).json()["invocations"]
        return [c.get(f"/v1/invocations/{v['id']}").json() for v in views]


def succeeded_ids(gw: GatewayProcess) -> list[str]:
    return sorted(v["result"]["id"] for v in runs(gw) if v["status"] == "succeeded")


def emit(r: redis.Redis, stream: str) -> list[str]:
    ids = [f"evt-{i}" for i in range(N)]
    with r.pipeline(transaction=True) as pipe:  # all at once: the reader gets them in one read
        for i, id in enumerate(ids):
            pipe.xadd(stream, {"specversion": "1.0", "id": id, "source": "/shop", "type": "com.example.order", "data": str(i)})
        pipe.execute()
    return ids


@pytest.mark.parametrize("stall", ["redis.before-admit", "redis.before-ack"])
def test_sigkill_between_read_and_enqueue_delivers_each_event_once(tmp_path: Path, redis_url: str, stall: str) -> None:
    gw, stream, fn = setup(tmp_path, redis_url, stall)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/orders", content=pack_function(fn)).status_code == 201
        ids = emit(r, stream)
        wait_for(lambda: f"stalled at {stall}" in gw.log(), what="the reader to stall")
        assert int(r.xpending(stream, "spanfaas")["pending"]) == N  # read, not acknowledged
        if stall == "redis.before-admit":
            assert runs(gw) == []  # nothing was queued
        else:
            wait_for(lambda: succeeded_ids(gw) == ids, what="the queued invocations to run")
        gw.kill()  # SIGKILL: no graceful anything

        gw.env.pop("SPANFAAS_TEST_STALL")
        gw.start()
        wait_for(lambda: int(r.xpending(stream, "spanfaas")["pending"]) == 0, what="the entries to be acknowledged")
        wait_for(lambda: succeeded_ids(gw) == ids, what="every event to be delivered")
        time.sleep(0.3)  # would a second copy run?
        assert succeeded_ids(gw) == ids  # exactly one invocation per event id
        assert all(v["status"] == "succeeded" for v in runs(gw))
        metrics = httpx.get(gw.url + "/metrics").text
        dups = 'spanfaas_events_duplicates_total{source="redis"} ' + ("5.0" if stall == "redis.before-ack" else "0.0")
        assert dups in metrics or stall == "redis.before-admit"
    finally:
        gw.stop()
        r.close()


def _orders_reader(tmp_path: Path, url: str) -> tuple[Path, Path]:
    """A config with a reader of stream 'orders' (start = "new") and a function its events start."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[[events.redis]]\nname = "orders"\nstream = "orders"\nurl = "{url}"\nblock = 0.1\nconsumer = "gw"\nstart = "new"\n'
    )
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "orders"\nisolation = "reuse"\n[[triggers]]\nsource = "/shop"\n')
    return config, fn


def test_entries_written_after_redis_restarted_empty_are_delivered(tmp_path: Path) -> None:
    """Redis restarted without its data (no persistence) loses the consumer group with the
    stream.  The reader made the group again as a new one, from the stream's end ('$' for
    start = "new"), after its reconnect backoff: the entries producers had written to the
    restarted Redis meanwhile were never read -- accepted by the stream, lost."""
    if not RedisServer.available():
        pytest.skip("redis-server not installed; `make test` (scripts/test-deps.sh) installs it")
    server = RedisServer().start()
    gw: GatewayProcess | None = None
    try:
        config, fn = _orders_reader(tmp_path, server.url)
        gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_CONFIG": str(config)})
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/orders", content=pack_function(fn)).status_code == 201
        wait_for(lambda: "reading stream orders" in gw.log(), what="the reader to start")
        with redis.Redis.from_url(server.url) as r:
            before = emit(r, "orders")
        wait_for(lambda: succeeded_ids(gw) == before, what="the first events to be delivered")

        server.stop()  # SIGKILL, and back without its data
        # The reader backs off (0.1 s, doubling): from its 4th try on, it is back 0.8 s later at the earliest.
        wait_for(lambda: gw.log().count("reconnecting") >= 4, what="the reader to try Redis a few times")
        server.start()
        with redis.Redis.from_url(server.url) as r:
            after = [f"late-{i}" for i in range(N)]
            for i, id in enumerate(after):  # a producer that waited for Redis writes at once
                r.xadd("orders", {"specversion": "1.0", "id": id, "source": "/shop", "type": "com.example.order", "data": str(i)})
            wait_for(lambda: succeeded_ids(gw) == sorted(before + after), what="the entries written after the restart")
            assert int(r.xpending("orders", "spanfaas")["pending"]) == 0
    finally:
        if gw is not None:
            gw.stop()
        server.stop()


def test_entries_written_while_the_gateway_was_down_and_redis_restarted_empty_are_delivered(tmp_path: Path) -> None:
    """The same with the gateway down while Redis restarts: the reader, started afresh, took
    the missing group for a new one and made it at the stream's end (start = "new"), so the
    entries producers wrote meanwhile were skipped.  The store remembers the group."""
    if not RedisServer.available():
        pytest.skip("redis-server not installed; `make test` (scripts/test-deps.sh) installs it")
    server = RedisServer().start()
    gw: GatewayProcess | None = None
    try:
        config, fn = _orders_reader(tmp_path, server.url)
        with redis.Redis.from_url(server.url) as r:
            r.xadd("orders", {"specversion": "1.0", "id": "history", "source": "/shop", "type": "t", "data": "0"})
        gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_CONFIG": str(config)})
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/orders", content=pack_function(fn)).status_code == 201
        wait_for(lambda: "reading stream orders" in gw.log(), what="the reader to start")
        with redis.Redis.from_url(server.url) as r:
            before = emit(r, "orders")
        wait_for(lambda: succeeded_ids(gw) == before, what="the first events to be delivered")  # not "history": start = "new"
        gw.stop()

        server.stop()  # SIGKILL, and back without its data, while the gateway is down
        server.start()
        with redis.Redis.from_url(server.url) as r:
            after = [f"late-{i}" for i in range(N)]
            for i, id in enumerate(after):
                r.xadd("orders", {"specversion": "1.0", "id": id, "source": "/shop", "type": "com.example.order", "data": str(i)})
            gw.start()
            wait_for(lambda: succeeded_ids(gw) == sorted(before + after), timeout=10, what="the entries written while it was down")
            assert int(r.xpending("orders", "spanfaas")["pending"]) == 0
        assert "was gone" in gw.log()
    finally:
        if gw is not None:
            gw.stop()
        server.stop()
