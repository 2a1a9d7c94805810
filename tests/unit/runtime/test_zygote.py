"""The zygote's message loop: a failure to start one template or spare fails
that start, never the zygote (and with it every function it serves)."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import msgspec
import pytest

from spanfaas.runtime import fitter, forking
from spanfaas.runtime import protocol as p
from spanfaas.runtime import zygote as z


def _request(**kw: object) -> p.SpawnTemplate:
    base: dict[str, object] = dict(
        key="f-1", name="f", bundle_path="/nonexistent", module="handler", function="handler", env={},
        scratch_dir="/nonexistent", isolation="strict", concurrency=1, instance_memory=0, sandbox=None, cgroup=[],
    )  # fmt: skip
    return p.SpawnTemplate(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def pair() -> Iterator[tuple[z.Zygote, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    zyg = z.Zygote(ours)
    yield zyg, theirs
    ours.close()
    theirs.close()
    os.close(zyg.wake_r)
    os.close(zyg.wake_w)


def _answer(sock: socket.socket) -> object:
    got = p.recv_msg(sock, msgspec.msgpack.Decoder(p.ZygoteEvent))
    assert got is not None
    return got[0]


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_a_template_that_cannot_be_forked_fails_its_start_and_the_zygote_goes_on(
    pair: tuple[z.Zygote, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    zyg, runtime_end = pair

    def out_of_pids() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(forking.forker, "fork", out_of_pids)
    channel_r, channel_w = os.pipe()  # stands for the template's channel
    os.close(channel_w)
    stop = zyg._on_message(_request(), [channel_r])  # no sandbox: forked directly; the fork fails
    assert stop is False
    assert _answer(runtime_end) == p.TemplateSpawned("f-1", -1)
    assert not _open(channel_r)  # closed, not leaked


def test_a_sandboxed_template_whose_report_channel_fails_fails_its_start(
    pair: tuple[z.Zygote, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    zyg, runtime_end = pair

    def out_of_fds() -> tuple[int, int]:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(fitter, "channel", out_of_fds)
    channel_r, channel_w = os.pipe()
    os.close(channel_w)
    assert zyg._on_message(_request(sandbox={"namespaces": True}, cgroup=[]), [channel_r]) is False
    assert _answer(runtime_end) == p.TemplateSpawned("f-1", -1)
    assert not _open(channel_r)
    assert zyg._on_message(p.PrepareSpare("spare-1", []), []) is False
    assert _answer(runtime_end) == p.SpareReady("spare-1", -1)


def test_a_spawn_request_whose_channel_did_not_arrive_fails_its_start(pair: tuple[z.Zygote, socket.socket]) -> None:
    zyg, runtime_end = pair
    assert zyg._on_message(_request(gen=7), []) is False
    assert _answer(runtime_end) == p.TemplateSpawned("f-1", -1, 7)  # the pool's generation, echoed


def test_a_runtime_gone_while_the_zygote_answers_ends_it_quietly(
    pair: tuple[z.Zygote, socket.socket], monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A gateway that failed its start-up (a DNS port in use) closed the runtime while
    the zygote prepared a spare: the zygote printed a BrokenPipeError traceback, then
    another from its answer that the spare failed, then died of it."""
    zyg, runtime_end = pair
    monkeypatch.setattr(zyg, "_fork_shell", lambda *a, **kw: (-1, 0, -1))  # (no real spare needed)
    runtime_end.close()
    assert zyg._on_message(p.PrepareSpare("spare-1", []), []) is True  # the loop ends, as on EOF
    assert zyg._on_message(_request(), []) is True
    assert "Traceback" not in capfd.readouterr().err
