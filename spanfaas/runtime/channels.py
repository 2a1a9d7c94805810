"""The runtime's (asyncio) ends of the zygote, template and instance channels."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from spanfaas.runtime import protocol as p

_UCRED = struct.Struct("3i")
_CREDS_SPACE = socket.CMSG_SPACE(_UCRED.size)
_hello_decoder = msgspec.msgpack.Decoder(p.Hello)
_done_decoder = msgspec.msgpack.Decoder(p.Done)


class ControlChannel:
    """A SOCK_SEQPACKET channel: one message (and its fds) per frame.

    Reads are driven by ``loop.add_reader``; a send that would block is
    queued and flushed when the socket becomes writable.
    """

    def __init__(
        self,
        sock: socket.socket,
        decoder: msgspec.msgpack.Decoder[Any],
        on_message: Callable[[Any, list[int]], None],
        on_eof: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._decoder = decoder
        self._on_message = on_message
        self._on_eof = on_eof
        self._loop = asyncio.get_running_loop()
        self._outbox: deque[tuple[bytes, list[int]]] = deque()
        self._closed = False
        self._encoder = msgspec.msgpack.Encoder()
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, msg: msgspec.Struct, fds: list[int] | None = None) -> None:
        if self._closed:
            return
        data = self._encoder.encode(msg)
        if not self._outbox and self._try_send(data, fds or []):
            return
        # Queued: keep our own copies of the fds, the caller closes its own at once.
        self._outbox.append((data, [os.dup(fd) for fd in fds or []]))
        if len(self._outbox) == 1:
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _try_send(self, data: bytes, fds: list[int]) -> bool:
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.send(data)
        except BlockingIOError:
            return False
        except OSError:
            self._eof()
            return True
        return True

    def _writable(self) -> None:
        while self._outbox:
            data, fds = self._outbox[0]
            if not self._try_send(data, fds):
                return
            if self._closed:  # the send failed and closed the channel (and the queued fds)
                return
            self._outbox.popleft()
            for fd in fds:
                os.close(fd)
        if not self._closed:
            self._loop.remove_writer(self.sock.fileno())

    def drain(self) -> None:
        """Handle every message already received, up to EOF, now (not on the next turn of the loop)."""
        self._readable()

    def _readable(self) -> None:
        while not self._closed:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, p.FD_MSG_MAX, 8)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._eof()
                return
            self._on_message(self._decoder.decode(data), list(fds))

    def _eof(self) -> None:
        if self._closed:
            return
        self.close()
        self._on_eof()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _data, fds in self._outbox:
            for queued in fds:
                os.close(queued)
        self._outbox.clear()
        fd = self.sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        self.sock.close()


async def read_hello(sock: socket.socket, timeout: float, loop: asyncio.AbstractEventLoop | None = None) -> tuple[int, int]:
    """Read an instance's Hello; return (seq, host pid from SCM_CREDENTIALS).  ``sock`` is left non-blocking.

    Most instances said hello before the template's note of them came (their batch
    was forked first): theirs is read at once, without a reader registered with the
    loop and removed again (on uvloop a poll handle made and closed, 3-4 epoll_ctl)
    and without a future and a timeout."""
    loop = loop or asyncio.get_running_loop()
    sock.setblocking(False)
    try:
        return _hello(sock)
    except BlockingIOError:
        pass
    fut: asyncio.Future[tuple[int, int]] = loop.create_future()

    def readable() -> None:
        if fut.done():
            return
        try:
            fut.set_result(_hello(sock))
        except BlockingIOError:
            return
        except ConnectionError as exc:
            fut.set_exception(exc)

    loop.add_reader(sock.fileno(), readable)
    try:
        async with asyncio.timeout(timeout):  # (wait_for drops a cancel on Python 3.11)
            return await fut
    finally:
        if sock.fileno() >= 0:
            loop.remove_reader(sock.fileno())


def _hello(sock: socket.socket) -> tuple[int, int]:
    """The hello waiting on ``sock`` (non-blocking); BlockingIOError if none yet, and
    ConnectionError if the instance exited (or the read failed) before it said it."""
    try:
        data, anc, _flags, _addr = sock.recvmsg(4096, _CREDS_SPACE)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise ConnectionError(str(exc)) from None
    if not data:
        raise ConnectionError("instance exited before it said hello")
    pid = 0
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _UCRED.unpack(payload[: _UCRED.size])[0]
    hlen, _blen = p.FRAME.unpack_from(data)
    hello = _hello_decoder.decode(data[p.FRAME.size : p.FRAME.size + hlen])
    return hello.seq, pid


class InstanceLost(ConnectionError):
    """The instance's channel closed: it exited, crashed or was killed.

    ``started`` is False for a request that was still queued on the
    connection behind the ones the instance was running: it never ran, so it
    may run elsewhere.
    """

    def __init__(self, message: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


_SMALL = 256 * 1024
_FIRST = 4 * 1024


class InstanceConnection(asyncio.BufferedProtocol):
    """Frames to and from one instance; replies resolve futures by request id.

    Several requests may be in flight (pipelining): the instance runs
    ``slots`` of them at once and the rest wait on the connection, in order.
    Requests go out in batches, with one write at the end of a turn of the
    event loop: at once while the instance has a free slot, else held until
    it answers (it would not start them sooner), so a batch costs one syscall
    and one wake-up of the instance however many requests it carries.
    """

    def __init__(
        self, on_lost: Callable[[], None], slots: int = 1, max_frame: int = 1 << 62, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._on_lost = on_lost
        self._slots = slots
        self._max_frame = max_frame
        """No answer is larger: a frame that says it is was forged (the instance runs
        the user's code, which can write to its socket) and is never buffered."""
        self.oversized = 0
        """The size a frame claimed past ``max_frame``; the connection was aborted."""
        self._loop = loop or asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[tuple[p.Done, bytes]]] = {}
        self._buf = bytearray(_FIRST)  # grows to _SMALL; a one-shot strict instance never needs it
        self._view = memoryview(self._buf)
        self._n = 0
        self._big: bytearray | None = None
        self._big_n = 0
        self._big_hlen = 0
        self._decoder = _done_decoder
        self._next_id = 0
        self._out: list[tuple[int, asyncio.Future[tuple[p.Done, bytes]], list[bytes | memoryview]]] = []
        """Requests not written yet (the last ones in ``pending``): id, future, frame."""
        self._unsent = 0
        """Requests in ``_out``."""
        self._flushing = False
        self.lost = False
        self._on_start: dict[int, Callable[[], None]] = {}
        """Requests whose caller wants to hear when they start (``request``), not started yet."""

    # -- asyncio.BufferedProtocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_n :]
        return self._view[self._n :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_n += nbytes
            if self._big_n == len(self._big):
                big, self._big = self._big, None
                view = memoryview(big)
                self._deliver(view[: self._big_hlen], bytes(view[self._big_hlen :]))
            return
        self._n += nbytes
        start = 0
        fs = p.FRAME.size
        while self._n - start >= fs:
            hlen, blen = p.FRAME.unpack_from(self._buf, start)
            total = fs + hlen + blen
            if total > self._max_frame:
                # Never allocate what the instance claims (up to 8 GiB): drop it.
                self.oversized = total
                self._n = 0
                if self.transport is not None:
                    self.transport.abort()
                return
            if self._n - start < total:
                if len(self._buf) < total <= _SMALL:  # outgrew the first small buffer
                    grown = bytearray(_SMALL)
                    rest = self._n - start
                    grown[:rest] = self._view[start : self._n]
                    self._buf, self._view, self._n = grown, memoryview(grown), rest
                    return
                if total > len(self._buf):
                    # A large frame: continue it in its own buffer.
                    self._big = bytearray(hlen + blen)
                    have = self._n - start - fs
                    self._big[:have] = self._view[start + fs : self._n]
                    self._big_n = have
                    self._big_hlen = hlen
                    self._n = 0
                    return
                break
            h0 = start + fs
            self._deliver(self._view[h0 : h0 + hlen], bytes(self._view[h0 + hlen : start + total]))
            start += total
        if start:
            rest = self._n - start
            self._buf[:rest] = self._view[start : self._n]
            self._n = rest

    def _deliver(self, head: memoryview, body: bytes) -> None:
        done = self._decoder.decode(head)
        fut = self.pending.pop(done.id, None)
        if fut is not None and not fut.done():
            fut.set_result((done, body))
        if self._on_start:  # a slot is free: the next request written, if any, starts
            ran = self._on_start.pop(done.id, None)  # (answered: it ran, whatever we thought)
            if ran is not None:
                ran()
            self._started()
        if self._unsent and not self._flushing:  # a slot is free: send what was held
            self._flushing = True
            self._loop.call_soon(self._flush)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        # Requests are served in the order they were sent (``pending`` keeps it),
        # ``slots`` at a time: past the first ``slots`` (or not sent yet) none had started.
        written = len(self.pending) - self._unsent
        running = min(self._slots, written)
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            # The instance went with bytes we wrote unread (the kernel then resets the
            # connection: an idle strict child killed before it read its request), or
            # before we wrote them: the last request written never reached it whole.
            running = min(running, written - 1)
        self._out.clear()
        self._unsent = 0
        self._on_start.clear()
        for i, fut in enumerate(self.pending.values()):
            if not fut.done():
                fut.set_exception(InstanceLost("instance connection lost", started=i < running))
        self.pending.clear()
        self._on_lost()

    # -- requests ---------------------------------------------------------------

    def request(
        self, req: p.Invoke, body: bytes, on_start: Callable[[], None] | None = None
    ) -> asyncio.Future[tuple[p.Done, bytes]]:
        """Send ``req``; ``on_start`` is called once the instance may run it (written, and among
        the first ``slots`` unanswered: see ``running``), not while it waits behind others."""
        fut: asyncio.Future[tuple[p.Done, bytes]] = self._loop.create_future()
        if self.lost or self.transport is None:
            # Lost before this request was made (a waiter handed the instance just
            # before it died): it never reached the instance, so it may run elsewhere.
            fut.set_exception(InstanceLost("instance connection lost", started=False))
            return fut
        if on_start is not None:
            self._on_start[req.id] = on_start
        self.pending[req.id] = fut
        self._out.append((req.id, fut, p.encode(req, body)))
        self._unsent += 1
        if not self._flushing and len(self.pending) - self._unsent < self._slots:
            self._flushing = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flushing = False
        out, self._out = self._out, []
        self._unsent = 0
        if not out or self.transport is None or self.lost:
            return
        parts: list[bytes | memoryview] = []
        for id, fut, frame in out:
            if fut.done():  # its caller gave up, or its deadline passed, while it was held: the instance never sees it
                self.pending.pop(id, None)
                self._on_start.pop(id, None)
                continue
            parts += frame
        if parts:
            self.transport.writelines(parts)
            if self._on_start:
                self._started()

    def _started(self) -> None:
        """Call ``on_start`` of the requests that may run now (see ``running``)."""
        running = min(self._slots, len(self.pending) - self._unsent)
        for i, id in enumerate(self.pending):
            if i >= running:
                break
            on_start = self._on_start.pop(id, None)
            if on_start is not None:
                on_start()

    def abandon(self, id: int) -> asyncio.Future[tuple[p.Done, bytes]] | None:
        """The caller of request ``id`` gave up (its future was cancelled).

        None if the instance never gets it (not written yet: the next flush
        drops it) or already answered it; else a new future for its answer (or
        its loss), in its place: the request runs, or waits its turn, on the
        instance all the same."""
        if id not in self.pending or any(queued == id for queued, _fut, _frame in self._out):
            return None
        fut: asyncio.Future[tuple[p.Done, bytes]] = self._loop.create_future()
        self.pending[id] = fut  # same key: its place in the order is kept
        return fut

    def running(self, id: int) -> bool:
        """Whether request ``id`` may be running: among the first ``slots`` unanswered
        (the others still wait on the connection)."""
        running = min(self._slots, len(self.pending) - self._unsent)
        for i, pending in enumerate(self.pending):
            if i >= running:
                return False
            if pending == id:
                return True
        return False

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
