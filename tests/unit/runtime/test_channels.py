"""read_hello on real socketpairs: a hello already waiting is read at once, a later
one through the loop, and no reader is left registered either way."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import read_hello


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return ours, theirs


async def test_a_hello_already_waiting_is_read_with_its_senders_pid() -> None:
    ours, theirs = _pair()
    try:
        theirs.send(b"".join(p.encode(p.Hello(7))))
        assert await read_hello(ours, 5) == (7, os.getpid())
        assert not asyncio.get_running_loop().remove_reader(ours.fileno())  # none was left registered
        assert ours.getblocking() is False
    finally:
        ours.close()
        theirs.close()


async def test_a_hello_that_comes_later_is_awaited() -> None:
    ours, theirs = _pair()
    try:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, theirs.send, b"".join(p.encode(p.Hello(3))))
        assert await read_hello(ours, 5, loop) == (3, os.getpid())
        assert not loop.remove_reader(ours.fileno())
    finally:
        ours.close()
        theirs.close()


@pytest.mark.parametrize("later", [False, True])
async def test_an_instance_gone_before_its_hello_is_a_connection_error(later: bool) -> None:
    ours, theirs = _pair()
    try:
        loop = asyncio.get_running_loop()
        if later:
            loop.call_later(0.05, theirs.close)
        else:
            theirs.close()
        with pytest.raises(ConnectionError, match="before it said hello"):
            await read_hello(ours, 5)
        assert not loop.remove_reader(ours.fileno())
    finally:
        ours.close()
        theirs.close()


async def test_no_hello_in_time_is_a_timeout() -> None:
    ours, theirs = _pair()
    try:
        with pytest.raises(TimeoutError):
            await read_hello(ours, 0.05)
        assert not asyncio.get_running_loop().remove_reader(ours.fileno())
    finally:
        ours.close()
        theirs.close()
