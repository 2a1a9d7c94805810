"""A lean asyncio transport for the runtime's end of an instance's socket.

A strict instance serves one call, so the runtime opens one connection per
call: what opening it costs is paid per call.  ``loop.create_unix_connection``
is general (a coroutine, a waiter future, ``connection_made`` and its result
each one more turn of the loop; ``setblocking``, ``getsockname``,
``getpeername`` and two ``getsockopt`` calls, ~50 µs of the runtime's CPU per
call under load).  An instance's socket needs none of it: a connected Unix
stream socket, read into an ``asyncio.BufferedProtocol``'s buffer and written
with ``sendmsg`` (one syscall for a frame's parts, no join), whose reader
stays registered from the hello on (``adopt``: one ``epoll_ctl`` less).

It keeps the semantics ``InstanceConnection`` relies on from asyncio's
transport: ``connection_lost`` once, with the error that ended a read or a
write (``ConnectionResetError``, ``BrokenPipeError``) or None; after
``close()`` or ``abort()``, on a later turn of the loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

__all__ = ["SocketStream"]


class SocketStream(asyncio.Transport):
    """``protocol``'s transport on ``sock`` (non-blocking, connected): reads while
    open, writes what it is given, and closes ``sock`` when it ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.BufferedProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._backlog: list[bytes | memoryview] = []
        """What a write left unsent (the socket was full): sent when it is writable."""
        self._closing = False
        self._lost = False
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._read_ready)  # (a callback swap if the hello's reader is still there)

    # -- reading -------------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._closing:
            return
        try:
            nbytes = self._sock.recv_into(self._protocol.get_buffer(-1))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._end(exc)
            return
        except Exception as exc:  # the protocol's get_buffer failed: as asyncio's transport, log and end
            self._fail(exc)
            return
        if not nbytes:
            self._end(None)
            return
        try:
            self._protocol.buffer_updated(nbytes)
        except Exception as exc:
            self._fail(exc)

    # -- writing -------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writelines([data])

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._closing:
            return
        parts = [memoryview(part) for part in list_of_data if len(part)]
        if not parts:
            return
        if self._backlog:
            self._backlog += parts
            return
        self._backlog = self._send(parts)
        if self._backlog:
            self._loop.add_writer(self._fd, self._write_ready)

    def _send(self, parts: list[memoryview]) -> list[bytes | memoryview]:
        """Send what fits of ``parts`` now; the rest (empty: all went)."""
        while parts:
            try:
                sent = self._sock.sendmsg(parts[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                return list(parts)
            except OSError as exc:
                self._end(exc)
                return []
            while sent:
                size = len(parts[0])
                if sent < size:
                    parts[0] = parts[0][sent:]
                    break
                sent -= size
                del parts[0]
        return []

    def _write_ready(self) -> None:
        parts = [memoryview(part) for part in self._backlog]
        self._backlog = self._send(parts)
        if not self._backlog and not self._lost:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._finish(None)

    def get_write_buffer_size(self) -> int:
        return sum(len(part) for part in self._backlog)

    # -- ending --------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; end once what was written went out (as asyncio's transport)."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._backlog:
            self._finish(None)

    def abort(self) -> None:
        """End now: what was not sent yet is dropped."""
        if self._lost:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._finish(None)

    def _fail(self, exc: Exception) -> None:
        self._loop.call_exception_handler(
            {"message": "the instance connection's protocol failed", "exception": exc, "transport": self, "protocol": self._protocol}
        )
        self._end(exc)

    def _end(self, exc: Exception | None) -> None:
        """A read or a write ended the connection (EOF, or ``exc``)."""
        if self._lost:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        """Tell the protocol (on a later turn, as asyncio does: never inside a caller's
        ``close()``), and close the socket."""
        if self._lost:
            return
        self._lost = True
        if self._backlog:
            self._backlog = []
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._lose, exc)

    def _lose(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._sock if name == "socket" else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("an instance's stream keeps its protocol")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


_IOV_MAX = 1024
"""At most this many parts to one sendmsg (Linux's UIO_MAXIOV)."""

