"""Wire messages between the runtime, the zygote, templates and instances.

Every frame is ``<II`` (header length, body length), a msgpack header (a
tagged ``msgspec.Struct`` from the unions below) and an optional raw body:
payloads and results travel as the body, so a 10 MB payload is never
re-encoded inside msgpack and is copied once per hop at most.

Control channels (zygote, templates) are SOCK_SEQPACKET, one message per
frame, so file descriptors (SCM_RIGHTS) stay with their message.  Instance
channels are SOCK_STREAM for large payloads.

Process tree and channels::

    runtime (asyncio) ──zygote channel──▶ zygote ──fork──▶ template ──fork──▶ instance
        │  ◀──────── template channel (per function, fd passing) ───────┘            │
        └──────────── instance channel (per instance socketpair) ─────────────────────┘
"""

from __future__ import annotations

import _socket
import os
import select
import socket
import struct
import sys
from typing import Any

import msgspec
from msgspec import Struct

from spanfaas.model import ErrorInfo, Protection

FRAME = struct.Struct("<II")
FD_MSG_MAX = 64 * 1024


# -- runtime → zygote ----------------------------------------------------------------


class SpawnTemplate(Struct, tag=True, kw_only=True):
    """Fork a template for one function version; its channel arrives as an fd."""

    key: str
    name: str
    bundle_path: str
    module: str
    function: str
    env: dict[str, str]
    scratch_dir: str
    isolation: str
    concurrency: int
    instance_memory: int
    """Bytes an instance may allocate on top of the template (RLIMIT_DATA)."""
    max_result: int = 0
    """Bytes a result may have (``runtime.max_payload``); 0: no limit."""
    initial: int = 0
    """Instances to fork as soon as the code is loaded (saves a round trip)."""
    sandbox: Any
    """A ``spanfaas.sandbox.SandboxPlan`` as builtins, or None for no sandbox."""
    cgroup: list[str]
    """cgroup directories (one per controller) the template joins, may be empty."""
    spare: str = ""
    """Hand this to the prepared spare of that name (``PrepareSpare``) instead of forking anew."""
    gen: int = 0
    """The pool's start this template is for, echoed in ``TemplateSpawned``."""


class PrepareSpare(Struct, tag=True):
    """Fork a sandbox shell ahead of any deploy: namespaces unshared, pid 2 set
    up, in ``cgroup`` (the join takes 5-20 ms on cgroup v1), waiting for the
    ``SpawnTemplate`` that names it.  Takes that work off the cold start."""

    key: str
    cgroup: list[str]


class ZygoteShutdown(Struct, tag=True):
    pass


# -- zygote → runtime --------------------------------------------------------------


class TemplateSpawned(Struct, tag=True):
    """Sent with a pidfd of the template when the kernel has them (``pid`` > 0).

    ``gen`` echoes the ``SpawnTemplate``'s: a notice read late, after the template it
    names is gone and its pool asked for the next one (same key), is told apart by it."""

    key: str
    pid: int
    gen: int = 0


class TemplateExited(Struct, tag=True):
    pid: int
    status: int


class SpareReady(Struct, tag=True):
    """A spare is forked (pid > 0) or could not be (pid -1)."""

    key: str
    pid: int


ZygoteRequest = SpawnTemplate | PrepareSpare | ZygoteShutdown
ZygoteEvent = TemplateSpawned | TemplateExited | SpareReady


# -- runtime ↔ template -------------------------------------------------------------


class TemplateReady(Struct, tag=True, kw_only=True):
    import_ms: float
    protections: list[Protection]
    sweeps: bool = False
    """Strict without Landlock: the template sweeps the scratch tmpfs before it tells an
    instance's exit, and a call that starts after another answered waits for that (``Template.sweep``)."""


class TemplateFailed(Struct, tag=True):
    error: ErrorInfo
    sandbox: bool = False
    """It failed setting its sandbox up, before any user code: the platform failed, not the bundle."""


class Importing(Struct, tag=True):
    """The template imports the function's code now.  Sent with one fd: the capture
    of what the module prints.  A template that exits without a word after this (the
    module called ``os._exit``, or crashed) died in the function's code, not the platform's."""


class Fork(Struct, tag=True):
    count: int
    warm: bool = True
    """Run the request path once before the hello: for instances forked ahead
    of demand (an invocation already waiting would wait longer)."""


class InstanceForked(Struct, tag=True):
    """Sent with two fds: the runtime's end of the instance socketpair, and the
    instance's log capture (a memfd, read when the instance is lost mid-call)."""

    seq: int


class ForkFailed(Struct, tag=True):
    """The template could not fork instance ``seq`` (e.g. the pids limit)."""

    seq: int
    reason: str


class InstanceExited(Struct, tag=True):
    seq: int
    status: int
    """``os.waitpid`` status word."""


class Retire(Struct, tag=True):
    """Tell the template to end an idle instance (scale-in)."""

    seq: int


TemplateRequest = Fork | Retire
TemplateEvent = Importing | TemplateReady | TemplateFailed | InstanceForked | InstanceExited | ForkFailed


# -- runtime ↔ instance --------------------------------------------------------------


class Hello(Struct, tag=True):
    """An instance's first frame; it carries SCM_CREDENTIALS (its host pid)."""

    seq: int


class Invoke(Struct, tag=True, kw_only=True):
    id: int
    invocation_id: str
    content_type: str
    deadline: float
    """Wall-clock time (``time.time()``) the invocation must finish by."""
    event: dict[str, Any] | None = None


class Done(Struct, tag=True, kw_only=True):
    id: int
    content_type: str = "application/json"
    error: ErrorInfo | None = None
    logs: str = ""
    duration_ms: float = 0.0


InstanceRequest = Invoke
InstanceEvent = Hello | Done


# -- framing ---------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()


def encode(header: Struct, body: bytes | bytearray | memoryview = b"") -> list[bytes | memoryview]:
    """Return the frame as buffers for ``sendmsg``/``writelines`` (no join copy)."""
    head = _encoder.encode(header)
    parts: list[bytes | memoryview] = [FRAME.pack(len(head), len(body)), head]
    if body:
        parts.append(body if isinstance(body, (bytes, memoryview)) else memoryview(body))
    return parts


def send_frame(sock: socket.socket, header: Struct, body: bytes | memoryview = b"") -> None:
    """Blocking send of one frame on a stream channel (instance side)."""
    send_parts(sock, encode(header, body))


def send_parts(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Blocking send of encoded frames with one ``sendmsg`` (more only for what it did not take)."""
    sent = sock.sendmsg(parts)
    total = sum(map(len, parts))  # (a generator would be one more frame for a fresh child to fault in)
    if sent < total:  # a large body: finish what the kernel did not take at once
        sock.sendall(memoryview(b"".join(parts))[sent:])


def recv_exactly(sock: socket.socket, n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def recv_frame(sock: socket.socket, decoder: msgspec.msgpack.Decoder[Any]) -> tuple[Any, memoryview] | None:
    """Blocking receive of one frame; None at EOF."""
    head = recv_exactly(sock, FRAME.size)
    if head is None:
        return None
    hlen, blen = FRAME.unpack(head)
    data = recv_exactly(sock, hlen + blen)
    if data is None:
        return None
    view = memoryview(data)
    return decoder.decode(view[:hlen]), view[hlen:]


class FrameReader:
    """Blocking frame reader for an instance: one ``recv`` per small frame.

    Reads up to ``chunk`` bytes at a time, so a small request costs one
    syscall instead of two (header, then the rest); a large body is read
    straight into its own buffer.
    """

    def __init__(self, sock: socket.socket, decoder: msgspec.msgpack.Decoder[Any], chunk: int = 64 * 1024) -> None:
        self.sock = sock
        self.decoder = decoder
        # Wait with poll(POLLIN), not in recv: a task blocked in recv on a Unix
        # socket is also woken when the peer *reads* (buffer space freed), a
        # spurious context switch on every request.
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self.buf = bytearray(chunk)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def prime(self, data: bytes) -> None:
        """Take ``data`` as if it had been received (a warm-up pass reads a frame
        through the reader without the socket).  Only while the buffer is empty."""
        if self.start != self.end or len(data) > len(self.buf):
            raise ValueError("prime() needs an empty reader and data that fits its buffer")
        self.buf[: len(data)] = data
        self.start, self.end = 0, len(data)

    def _fill(self) -> bool:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):
            rest = self.end - self.start
            self.buf[:rest] = self.view[self.start : self.end]
            self.start, self.end = 0, rest
        self._poll.poll()
        n = self.sock.recv_into(self.view[self.end :])
        if n == 0:
            return False
        self.end += n
        return True

    def read(self) -> tuple[Any, memoryview] | None:
        fs = FRAME.size
        while self.end - self.start < fs:
            if not self._fill():
                return None
        hlen, blen = FRAME.unpack_from(self.buf, self.start)
        total = fs + hlen + blen
        if total > len(self.buf):
            data = bytearray(hlen + blen)
            have = self.end - self.start - fs
            data[:have] = self.view[self.start + fs : self.end]
            self.start = self.end = 0
            view = memoryview(data)
            while have < len(data):
                n = self.sock.recv_into(view[have:])
                if n == 0:
                    return None
                have += n
            return self.decoder.decode(view[:hlen]), view[hlen:]
        while self.end - self.start < total:
            if not self._fill():
                return None
        h0 = self.start + fs
        header = self.decoder.decode(self.view[h0 : h0 + hlen])
        body = memoryview(bytes(self.view[h0 + hlen : self.start + total]))
        self.start += total
        return header, body


def send_msg(sock: socket.socket, header: Struct, fds: list[int] | None = None) -> None:
    """Send one message on a SOCK_SEQPACKET control channel, with optional fds."""
    data = _encoder.encode(header)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


_FDS_SPACE = socket.CMSG_SPACE(8 * 4)


def recv_msg_lean(sock: _socket.socket, decoder: msgspec.msgpack.Decoder[Any]) -> tuple[Any, list[int]] | None:
    """``recv_msg`` for a freshly forked process (a template reading its start-up
    messages): the C socket's ``recvmsg``, not ``socket.recv_fds`` and its
    ``array``, whose Python un-shares ~50 KiB more of every template.  At most
    8 fds; None at EOF (the fds that came with it closed)."""
    data, ancillary, _flags, _addr = sock.recvmsg(FD_MSG_MAX, _FDS_SPACE)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += (int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, len(payload) - 3, 4))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return decoder.decode(data), fds


def recv_msg(sock: socket.socket, decoder: msgspec.msgpack.Decoder[Any]) -> tuple[Any, list[int]] | None:
    """Receive one control message and the fds it carries; None at EOF."""
    data, fds, _flags, _addr = socket.recv_fds(sock, FD_MSG_MAX, 8)
    if not data:
        return None
    return decoder.decode(data), list(fds)
