"""Pool bookkeeping that needs no processes: instance exits and what they are reported as."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import pytest

from spanfaas.errors import InvalidBundle
from spanfaas.model import ErrorInfo, parse_manifest
from spanfaas.runtime import protocol as p
from spanfaas.runtime.channels import ControlChannel
from spanfaas.runtime.pool import Instance, Pool, _template_decoder

KILLED = int(signal.SIGKILL)  # a wait status: killed by SIGKILL


class _Runtime:
    """What a pool asks of its runtime here: the cgroup's OOM-kill count."""

    def __init__(self) -> None:
        self.kills = 0

    def oom_kills(self, pool: Any) -> int:
        return self.kills


def _pool(rt: _Runtime) -> Pool:
    spec = parse_manifest('name = "f"\nhandler = "handler:handler"\nisolation = "reuse"\n')
    return Pool(rt, spec, "/nonexistent", "f-1")  # type: ignore[arg-type]


def _instance(pool: Pool, seq: int) -> Instance:
    inst = Instance(seq)
    inst.ready = True
    pool._instances[seq] = inst
    return inst


async def test_an_oom_kill_nobody_waited_on_is_not_blamed_on_the_next_sigkill() -> None:
    rt = _Runtime()
    pool = _pool(rt)
    unwatched, crashed = _instance(pool, 1), _instance(pool, 2)
    rt.kills = 1  # the cgroup OOM-killed an instance no call waited on (e.g. before its hello)
    pool._on_instance_exit(unwatched.seq, KILLED)
    pool._on_instance_exit(crashed.seq, KILLED)  # later, killed by SIGKILL for another reason
    lost = await pool._why_lost(crashed)
    assert lost.kind == "crashed", lost


async def test_every_call_on_an_oom_killed_instance_is_told_so() -> None:
    rt = _Runtime()
    pool = _pool(rt)
    inst = _instance(pool, 1)
    rt.kills = 1
    pool._on_instance_exit(inst.seq, KILLED)
    # A concurrent (reuse) instance ran two calls: both were lost to the OOM kill.
    assert (await pool._why_lost(inst)).kind == "oom"
    assert (await pool._why_lost(inst)).kind == "oom"


async def test_why_a_template_failed_is_heard_even_when_its_exit_notice_comes_first() -> None:
    """The template's "failed to load" travels on its channel, the zygote's notice
    that it exited on another: the notice may be handled first, and the deploy must
    still fail as the user's error (400), not as a lost template (502)."""
    pool = _pool(_Runtime())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool._chan = ControlChannel(ours, _template_decoder, pool._on_template_message, pool._on_template_eof)
    pool.state = "starting"
    ready = pool._ready = asyncio.get_running_loop().create_future()
    err = ErrorInfo(kind="error", type="AttributeError", message="module 'handler' has no callable 'handler'")
    p.send_msg(theirs, p.TemplateFailed(err))
    theirs.close()  # the template exited ...
    pool.on_template_exit(256)  # ... and the zygote's notice is handled before its channel is read
    with pytest.raises(InvalidBundle, match="has no callable 'handler'"):
        await ready
    assert pool.state == "cold" and pool._chan is None


class _Spawning(_Runtime):
    """A runtime that records the templates a pool asks it to start."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[int] = []

    def spawn_template(self, pool: Any, chan_fd: int, initial: int = 0) -> None:
        self.spawned.append(chan_fd)


async def test_a_template_that_dies_right_after_it_is_ready_is_started_again_for_the_waiting_call() -> None:
    """Ready, then gone (before any instance): the call that waited for the start must
    not wait out its timeout on a cold pool that nothing starts again."""
    rt = _Spawning()
    pool = _pool(rt)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pool._chan = ControlChannel(ours, _template_decoder, pool._on_template_message, pool._on_template_eof)
    pool.state = "starting"
    ready = pool._ready = asyncio.get_running_loop().create_future()
    pool.on_spawned(999_999_999)  # never a real pid: it must not be signalled once reaped
    p.send_msg(theirs, p.TemplateReady(import_ms=1.0, protections=[]))
    theirs.close()
    pool.on_template_exit(0)
    await ready  # the start the call awaited succeeded ...
    assert pool.state == "cold" and pool.template_pid == 0  # ... and the template is gone
    loop = asyncio.get_running_loop()
    waiting = loop.create_task(pool._wait(loop.time() + 5))
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(rt.spawned) == 1, "no new template was asked for"
    waiting.cancel()
    pool.close()
