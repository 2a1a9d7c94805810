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


def test_instance_connection_reassembles_frames_of_every_size() -> None:
    """Frames split anywhere, small ones that outgrow the first buffer, large ones."""
    import asyncio

    from spanfaas.runtime.channels import InstanceConnection

    async def run() -> None:
        conn = InstanceConnection(lambda: None)
        sizes = [0, 10, 5000, 100_000, 300_000, 3]
        futs = {}
        wire = b""
        for i, size in enumerate(sizes, start=1):
            futs[i] = asyncio.get_running_loop().create_future()
            conn.pending[i] = futs[i]
            wire += b"".join(bytes(x) for x in p.encode(p.Done(id=i, logs=str(i)), bytes([i]) * size))
        pos = 0
        for step in [1, 7, 4096, 100_000, 1, 500_000, 10**7]:
            chunk = wire[pos : pos + step]
            while chunk:
                buf = conn.get_buffer(len(chunk))
                n = min(len(buf), len(chunk))
                buf[:n] = chunk[:n]
                conn.buffer_updated(n)
                chunk = chunk[n:]
            pos += step
        for i, size in enumerate(sizes, start=1):
            done, body = futs[i].result()
            assert done.logs == str(i) and body == bytes([i]) * size

    asyncio.run(run())


def test_a_queued_control_message_keeps_its_fds_valid() -> None:
    """The caller closes its fd right after send(); a message that had to wait
    in the outbox must still carry that file, not whatever reuses the number."""
    import asyncio

    from spanfaas.runtime.channels import ControlChannel

    async def run() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        chan = ControlChannel(ours, msgspec.msgpack.Decoder(p.Fork), lambda m, f: None, lambda: None)
        filler = p.Fork(1)
        while chan._outbox == type(chan._outbox)():  # fill the socket until sends queue up
            chan.send(filler)
        r, w = os.pipe()
        chan.send(p.InstanceForked(9), fds=[w])
        os.close(w)  # what the caller does at once
        decoy_r, decoy_w = os.pipe()  # likely reuses w's number
        theirs.setblocking(False)
        decoder = msgspec.msgpack.Decoder(p.TemplateEvent | p.TemplateRequest)  # type: ignore[misc]
        got: list[int] = []
        for _ in range(2000):
            try:
                msg, fds = p.recv_msg(theirs, decoder)  # type: ignore[misc]
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            if isinstance(msg, p.InstanceForked):
                got = fds
                break
        assert len(got) == 1
        os.write(got[0], b"right pipe")
        assert os.read(r, 100) == b"right pipe"
        for fd in (r, decoy_r, decoy_w, *got):
            os.close(fd)
        chan.close()
        theirs.close()

    asyncio.run(run())


def test_a_primed_frame_reader_reads_from_its_buffer_then_from_the_socket() -> None:
    """An instance's warm-up pass reads a dummy request through its reader
    without the socket; the reader then reads real requests as before."""
    a, b = socket.socketpair()
    decoder: msgspec.msgpack.Decoder[p.InstanceRequest] = msgspec.msgpack.Decoder(p.InstanceRequest)
    with a, b:
        reader = p.FrameReader(b, decoder, chunk=4096)
        dummy = p.Invoke(id=0, invocation_id="warm", content_type="application/json", deadline=1.0)
        reader.prime(b"".join(bytes(x) for x in p.encode(dummy, b"{}")))
        with pytest.raises(ValueError, match="empty reader"):
            reader.prime(b"more")
        got = reader.read()
        assert got is not None and got[0] == dummy and bytes(got[1]) == b"{}"
        real = p.Invoke(id=1, invocation_id="real", content_type="application/json", deadline=2.0)
        p.send_frame(a, real, b"[1]")
        got = reader.read()
        assert got is not None and got[0] == real and bytes(got[1]) == b"[1]"
        with pytest.raises(ValueError, match="fits its buffer"):
            reader.prime(bytes(4097))


def test_a_request_is_started_when_it_reaches_a_free_slot_not_when_it_is_queued() -> None:
    """``on_start`` of a request fires once the instance may run it: written, among the first
    ``slots`` unanswered; a request pipelined behind a running one (or held, unwritten) has
    not started, though it left the pool's queue (an async invocation waiting there is no run)."""
    import asyncio

    from spanfaas.runtime.channels import InstanceConnection

    async def run() -> None:
        ours, theirs = socket.socketpair()
        try:
            loop = asyncio.get_running_loop()
            transport, conn = await loop.create_unix_connection(lambda: InstanceConnection(lambda: None, slots=1), sock=ours)
            started: list[int] = []
            futs = []
            for i in (1, 2, 3):
                req = p.Invoke(id=i, invocation_id=str(i), content_type="application/json", deadline=0.0)
                futs.append(conn.request(req, b"", on_start=lambda i=i: started.append(i)))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert started == [1]
            for i in (1, 2):
                reply = b"".join(bytes(x) for x in p.encode(p.Done(id=i)))
                buf = conn.get_buffer(len(reply))
                buf[: len(reply)] = reply
                conn.buffer_updated(len(reply))
                await futs[i - 1]
                for _ in range(3):
                    await asyncio.sleep(0)
                assert started == list(range(1, i + 2))
            transport.close()
        finally:
            theirs.close()

    asyncio.run(run())
