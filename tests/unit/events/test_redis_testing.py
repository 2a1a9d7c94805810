"""The test Redis server (events/testing.py) starts on a port that was taken after it was
picked, and does not take another Redis on its port for itself."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis

from spanfaas.events.testing import RedisServer
from spanfaas.ports import free_port

pytestmark = pytest.mark.skipif(not RedisServer.available(), reason="redis-server not installed; `make test` installs it")


def _picks(*ports: int) -> Iterator[int]:
    yield from ports
    while True:
        yield free_port()


def test_a_port_taken_after_it_was_picked_is_left_for_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = _picks(port)
        with RedisServer(pick=lambda: next(picks)) as server:
            assert server.port != port
            assert server.proc is not None and server.proc.poll() is None
            with redis.Redis.from_url(server.url) as r:
                assert r.info("server")["process_id"] == server.proc.pid


def test_another_redis_on_the_picked_port_is_not_taken_for_ours() -> None:
    # It answers PING as ours would: only its pid tells it apart.
    with RedisServer() as foreign:
        picks = _picks(foreign.port)
        with RedisServer(pick=lambda: next(picks)) as server:
            assert server.port != foreign.port
            assert server.proc is not None and server.proc.poll() is None
            with redis.Redis.from_url(server.url) as r:
                assert r.info("server")["process_id"] == server.proc.pid
