"""One write per HTTP response: the corked transport under uvicorn's protocol."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from spanfaas.gateway.corking import FLUSH_AT, CorkedHttpToolsProtocol, CorkedTransport


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def writelines(self, parts: list[bytes]) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def test_writes_of_one_turn_leave_together_and_close_flushes_first() -> None:
    async def run() -> None:
        real = _Transport()
        corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
        corked.write(b"")
        corked.writelines([b"body", b"!"])
        assert real.writes == [] and corked.get_write_buffer_size() == 24
        await asyncio.sleep(0)
        assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody!"]
        corked.write(b"last words")
        corked.close()
        assert real.writes[-1] == b"last words" and real.closing
        await asyncio.sleep(0)  # the flush scheduled for that write finds nothing left
        assert len(real.writes) == 2
        assert corked.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated

    asyncio.run(run())


def test_writes_to_a_closing_transport_are_dropped() -> None:
    async def run() -> None:
        real = _Transport()
        corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        corked.write(b"late")
        real.closing = True
        await asyncio.sleep(0)
        assert real.writes == []

    asyncio.run(run())


def test_a_turn_that_writes_much_flushes_as_it_goes() -> None:
    # Many responses in one turn (pipelined requests, a streamed body whose sends
    # never wait): what is held back stays bounded, and order is kept.
    async def run() -> None:
        real = _Transport()
        corked = CorkedTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        chunks = [bytes([i]) * 16 * 1024 for i in range(40)]
        for chunk in chunks:
            corked.write(chunk)
            assert corked.get_write_buffer_size() <= FLUSH_AT
        assert real.writes, "flushed within the turn"
        assert all(len(w) <= FLUSH_AT for w in real.writes)
        await asyncio.sleep(0)
        assert b"".join(real.writes) == b"".join(chunks)
        assert corked.get_write_buffer_size() == 0

    asyncio.run(run())


class _Paused(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = False

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False


def test_a_slow_reader_pauses_the_writer_within_one_turn() -> None:
    # Over a real socket whose peer does not read: the transport's pause_writing
    # reaches the protocol (uvicorn's then waits for drain) before the turn ends.
    async def run() -> None:
        ours, theirs = socket.socketpair()
        proto = _Paused()
        transport, _ = await asyncio.get_running_loop().create_connection(lambda: proto, sock=ours)
        try:
            corked = CorkedTransport(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
            chunk = b"x" * 64 * 1024
            for _ in range(256):  # 16 MiB, more than any socket buffer
                corked.write(chunk)
                if proto.paused:
                    break
            assert proto.paused, "the writer never learned the reader is slow"
            assert corked.get_write_buffer_size() - transport.get_write_buffer_size() <= FLUSH_AT
        finally:
            transport.abort()
            theirs.close()
            await asyncio.sleep(0)  # the transport closes its socket

    asyncio.run(run())


@pytest.mark.parametrize("size", [0, 10, 3 * 1024 * 1024])
def test_uvicorn_serves_whole_responses_through_it(size: int) -> None:
    body = b"x" * size

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % size)]})
        await send({"type": "http.response.body", "body": body})

    async def run() -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, http=CorkedHttpToolsProtocol, lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                for _ in range(3):  # keep-alive: several responses on one connection
                    r = await client.get("/")
                    assert r.status_code == 200 and r.content == body
        finally:
            server.should_exit = True
            await task

    asyncio.run(run())
