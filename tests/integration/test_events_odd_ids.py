"""Events whose source or id PostgreSQL cannot index as they are (over ~2.7 kB) are queued
and de-duplicated like any other, on both stores, over HTTP and from a Redis stream, where
one such entry held back every entry after it.  One with a NUL, which PostgreSQL cannot
store at all, CloudEvents forbids: it is refused, and holds back nothing either."""

from __future__ import annotations

import random
import string
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.events.testing import RedisServer
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = """
def handler(event, context):
    return {"id": context.event["id"], "source": context.event["source"]}
"""
LONG = "".join(random.Random(7).choices(string.ascii_letters, k=3000))  # incompressible: no index row takes it
ODD = [("/shop", LONG), (LONG, "order-2"), ("/shop", "order-3")]
NUL = ("/shop", "order\x001")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_db"))


def _gateway(tmp_path: Path, store: str | None, config: str = "") -> GatewayProcess:
    fn = tmp_path / "orders"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "orders"\nisolation = "reuse"\n[[triggers]]\ntype = "com.example.order"\n')
    (tmp_path / "config.toml").write_text(config)
    gw = GatewayProcess(tmp_path / "data", store=store, env={"SPANFAAS_CONFIG": str(tmp_path / "config.toml")})
    gw.start()
    with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
        assert c.put("/v1/functions/orders", content=pack_function(fn)).status_code == 201
    return gw


def _delivered(c: httpx.Client, n: int) -> list[tuple[str, str]]:
    """The (source, id) of the events that ran, once ``n`` have (or the time ran out), and
    of every other invocation of the function by then."""
    deadline = time.monotonic() + 30
    while True:
        views = c.get("/v1/invocations", params={"function": "orders", "limit": 100}).json()["invocations"]
        if sum(v["status"] == "succeeded" for v in views) >= n or time.monotonic() > deadline:
            results: list[dict[str, Any]] = [c.get(f"/v1/invocations/{v['id']}").json()["result"] for v in views]
            return sorted((r["source"], r["id"]) if r else ("?", v["status"]) for r, v in zip(results, views))
        time.sleep(0.05)


def test_an_event_whose_id_or_source_the_index_cannot_hold_is_queued_once(tmp_path: Path, store_url: str | None) -> None:
    """On PostgreSQL the de-duplication row of such an event was refused (DataError:
    'text fields cannot contain NUL', ProgramLimitExceeded: 'index row requires 3016
    bytes'): the event was answered 503 'retry', and so was every retry, for ever."""
    gw = _gateway(tmp_path, store_url)
    try:
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            for again in (False, True):
                for source, id in ODD:
                    event = {"specversion": "1.0", "id": id, "source": source, "type": "com.example.order"}
                    r = c.post("/v1/events", json=event, headers={"content-type": "application/cloudevents+json"})
                    assert r.status_code == 202, r.text
                    assert r.json()["events"][0]["duplicate"] is again, r.text
            source, id = NUL
            event = {"specversion": "1.0", "id": id, "source": source, "type": "com.example.order"}
            r = c.post("/v1/events", json=event, headers={"content-type": "application/cloudevents+json"})
            assert r.status_code == 400 and "U+0000" in r.json()["detail"], r.text
            assert _delivered(c, len(ODD)) == sorted(ODD)  # each once: the second sending queued nothing
    finally:
        gw.stop()


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not RedisServer.available():
        pytest.skip("redis-server not installed; `make test` (scripts/test-deps.sh) installs it")
    with RedisServer() as server:
        yield server.url


@pytest.mark.postgres
def test_a_redis_entry_postgresql_could_not_index_does_not_hold_back_the_stream(
    tmp_path: Path, postgres_db: str, redis_url: str
) -> None:
    """Its batch was refused by the store, read again from the pending list and refused
    again, for ever: neither it nor any entry written after it was delivered."""
    import redis

    stream = "orders-" + uuid.uuid4().hex[:8]
    config = (f'[[events.redis]]\nname = "orders"\nstream = "{stream}"\nurl = "{redis_url}"\n'
              'block = 0.1\nconsumer = "gw"\nstart = "all"\n')  # fmt: skip
    gw = _gateway(tmp_path, postgres_db, config)
    try:
        with redis.Redis.from_url(redis_url) as r:  # after the deploy: its trigger routes them
            for source, id in [NUL, *ODD]:  # the refused one first: it must not hold back the rest
                r.xadd(stream, {"specversion": "1.0", "id": id, "source": source, "type": "com.example.order"})
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert _delivered(c, len(ODD)) == sorted(ODD), gw.log()[-3000:]
    finally:
        gw.stop()
