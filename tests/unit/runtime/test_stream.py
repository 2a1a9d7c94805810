"""SocketStream, the runtime's transport on an instance's socket: on a real
socketpair, what InstanceConnection relies on from asyncio's transport."""

from __future__ import annotations

import asyncio
import socket

from spanfaas.runtime.stream import SocketStream


class _Recorder(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: list[Exception | None] = []
        self.gone = asyncio.get_running_loop().create_future()
        self._buf = bytearray(1000)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self._buf[:nbytes]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        self.gone.set_result(None)


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return ours, theirs


async def test_it_reads_into_the_protocols_buffer_and_tells_it_once_of_the_peers_end() -> None:
    ours, theirs = _pair()
    proto = _Recorder()
    stream = SocketStream(asyncio.get_running_loop(), ours, proto)
    theirs.sendall(b"x" * 2500)  # more than one buffer
    theirs.close()
    await asyncio.wait_for(proto.gone, 5)
    assert bytes(proto.data) == b"x" * 2500
    assert proto.lost == [None]
    assert stream.is_closing() and ours.fileno() == -1  # its socket closed with it
    stream.close()
    stream.abort()
    await asyncio.sleep(0)
    assert proto.lost == [None]


async def test_a_write_larger_than_the_socket_buffer_goes_out_whole_in_order() -> None:
    ours, theirs = _pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    proto = _Recorder()
    stream = SocketStream(asyncio.get_running_loop(), ours, proto)
    parts = [bytes([i]) * 100_000 for i in range(1, 6)]
    stream.writelines(parts[:3])
    assert stream.get_write_buffer_size() > 0  # it did not fit: held, sent as the peer reads
    stream.writelines(parts[3:])
    stream.close()  # what was written still goes out, then the socket closes
    theirs.setblocking(False)
    got = bytearray()
    loop = asyncio.get_running_loop()
    while True:
        chunk = await loop.sock_recv(theirs, 65536)
        if not chunk:
            break
        got += chunk
    theirs.close()
    assert bytes(got) == b"".join(parts)
    await asyncio.wait_for(proto.gone, 5)
    assert proto.lost == [None]


async def test_close_tells_the_protocol_on_a_later_turn_not_inside_the_call() -> None:
    ours, theirs = _pair()
    proto = _Recorder()
    stream = SocketStream(asyncio.get_running_loop(), ours, proto)
    stream.close()
    assert proto.lost == []
    await asyncio.wait_for(proto.gone, 5)
    assert proto.lost == [None]
    assert theirs.recv(1) == b""  # the peer sees the end
    theirs.close()


async def test_abort_drops_what_was_not_sent() -> None:
    ours, theirs = _pair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    proto = _Recorder()
    stream = SocketStream(asyncio.get_running_loop(), ours, proto)
    stream.write(b"y" * 1_000_000)
    assert stream.get_write_buffer_size() > 0
    stream.abort()
    assert stream.get_write_buffer_size() == 0
    await asyncio.wait_for(proto.gone, 5)
    assert proto.lost == [None]
    theirs.close()


async def test_a_write_to_a_peer_gone_ends_the_connection_with_its_error() -> None:
    ours, theirs = _pair()
    proto = _Recorder()
    stream = SocketStream(asyncio.get_running_loop(), ours, proto)
    theirs.close()
    stream.write(b"request")  # (before the loop saw the EOF)
    await asyncio.wait_for(proto.gone, 5)
    assert len(proto.lost) == 1 and isinstance(proto.lost[0], BrokenPipeError)


async def test_a_protocol_that_fails_ends_the_connection_and_is_reported() -> None:
    class Failing(_Recorder):
        def buffer_updated(self, nbytes: int) -> None:
            raise ValueError("bad frame")

    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        ours, theirs = _pair()
        proto = Failing()
        SocketStream(loop, ours, proto)
        theirs.send(b"z")
        await asyncio.wait_for(proto.gone, 5)
        assert len(proto.lost) == 1 and isinstance(proto.lost[0], ValueError)
        assert [type(c["exception"]) for c in reported] == [ValueError]
        theirs.close()
    finally:
        loop.set_exception_handler(None)
