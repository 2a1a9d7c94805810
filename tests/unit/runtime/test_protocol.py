"""Framing: typed headers, raw bodies, fds on control channels."""

from __future__ import annotations

import os
import socket

import msgspec
import pytest

from spanfaas.runtime import protocol as p


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 3 * 1024 * 1024 + 7])
def test_stream_frames_carry_typed_header_and_raw_body(size: int) -> None:
    a, b = socket.socketpair()
    body = os.urandom(size)
    with a, b:
        import threading

        t = threading.Thread(target=p.send_frame, args=(a, p.Invoke(id=7, invocation_id="x", content_type="t", deadline=1.5), body))
        t.start()
        got = p.recv_frame(b, msgspec.msgpack.Decoder(p.InstanceRequest))
        t.join()
    assert got is not None
    header, view = got
    assert header == p.Invoke(id=7, invocation_id="x", content_type="t", deadline=1.5)
    assert bytes(view) == body


def test_eof_is_none() -> None:
    a, b = socket.socketpair()
    a.close()
    with b:
        assert p.recv_frame(b, msgspec.msgpack.Decoder(p.Done)) is None


def test_control_messages_carry_fds() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    with a, b:
        p.send_msg(a, p.InstanceForked(3), fds=[w])
        p.send_msg(a, p.Fork(2))
        msg, fds = p.recv_msg(b, msgspec.msgpack.Decoder(p.TemplateEvent | p.TemplateRequest))  # type: ignore[misc]
        assert msg == p.InstanceForked(3) and len(fds) == 1
        os.write(fds[0], b"via passed fd")
        assert os.read(r, 100) == b"via passed fd"
        assert p.recv_msg(b, msgspec.msgpack.Decoder(p.TemplateEvent | p.TemplateRequest)) == (p.Fork(2), [])  # type: ignore[misc]
        for fd in (r, w, *fds):
            os.close(fd)
