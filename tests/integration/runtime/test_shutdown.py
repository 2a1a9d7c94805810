"""A runtime that closes leaves nothing behind, however its close is interrupted,
and whatever it was draining or removing at the time."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from spanfaas.model import parse_manifest
from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, runtime_settings
from tests.integration.runtime.test_cleanup import cgroup_dirs, descendants
from tests.integration.runtime.test_images import make_image

pytestmark = pytest.mark.asyncio(loop_scope="function")

SLOW = """
import time

def handler(event, context):
    time.sleep(event)
    return event
"""


async def _running(tmp_path: Path, sandbox: bool) -> tuple[LocalRuntime, Harness]:
    tmp_path.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=sandbox))
    await rt.start()
    return rt, Harness(rt, tmp_path / "functions")


def _assert_nothing_left(rt: LocalRuntime, before: set[int]) -> None:
    assert descendants(os.getpid()) - before == set(), "processes of the runtime outlived its close"
    assert cgroup_dirs(rt.cgroup_root) == [], "cgroups of the runtime outlived its close"
    assert not rt.scratch_root.exists()


@pytest.mark.parametrize("turns", [1, 2, 3, 5, 8], ids=lambda n: f"after-{n}-turns")
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
async def test_a_close_cancelled_midway_still_stops_everything_and_is_cancelled(tmp_path: Path, sandbox: bool, turns: int) -> None:
    """A shutdown is cancelled (a second Ctrl-C, a supervisor's timeout) while the runtime
    closes: the cancel reaches its caller, and no zygote, template, instance or cgroup is left."""
    before = descendants(os.getpid())
    rt, h = await _running(tmp_path, sandbox)
    try:
        await h.deploy("one", SLOW, "[scaling]\nprefork = 1\n")
        await h.deploy("two", SLOW, 'isolation = "reuse"\n')
        assert (await h.invoke("one", b"0")).error is None
        assert (await h.invoke("two", b"0")).error is None
        closing = asyncio.get_running_loop().create_task(rt.close())
        for _ in range(turns):
            await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
    finally:
        await rt.close()  # (a no-op once it closed)
    _assert_nothing_left(rt, before)


@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
async def test_a_close_during_a_redeploy_and_a_remove_drain_leaves_nothing_and_ends_their_calls(tmp_path: Path, sandbox: bool) -> None:
    """The runtime closes while a replaced version drains (a call still runs on it) and a
    removed function drains (its remove waits for its call): the drains end with the close,
    their calls are answered, and no process or cgroup of theirs is left."""
    before = descendants(os.getpid())
    rt, h = await _running(tmp_path, sandbox)
    loop = asyncio.get_running_loop()
    try:
        await h.deploy("replaced", SLOW)
        await h.deploy("removed", SLOW, 'isolation = "reuse"\n')
        calls = [loop.create_task(h.invoke(name, b"30")) for name in ("replaced", "removed")]
        while any(rt.pool(name).stats()["busy"] == 0 or rt.pool(name).stats()["idle"] for name in ("replaced", "removed")):
            await asyncio.sleep(0.01)  # both calls run
        await asyncio.sleep(0.2)
        await h.deploy("replaced", SLOW)  # the first version drains
        removing = loop.create_task(rt.remove("removed"))
        await asyncio.sleep(0.1)
        assert not removing.done()
        await rt.close()
        _assert_nothing_left(rt, before)
        async with asyncio.timeout(10):
            results = await asyncio.gather(*calls, return_exceptions=True)
            await removing
        assert all(not isinstance(r, asyncio.CancelledError) for r in results), results
    finally:
        await rt.close()


async def test_a_close_right_after_an_image_lost_its_last_function_stops_the_image_zygote_first(tmp_path: Path) -> None:
    """An image's last function is removed: its zygote is stopped in the background.  A close
    right then must wait for that stop, not cancel it: no zygote may outlive the close."""
    before = descendants(os.getpid())
    rt, h = await _running(tmp_path, sandbox=False)
    try:
        image = make_image(tmp_path, "a")
        d = h.root / "on-image"
        d.mkdir(parents=True)
        (d / "handler.py").write_text("def handler(event, context):\n    return 1\n")
        await rt.deploy(parse_manifest('name = "on-image"\nisolation = "reuse"\n'), d, image=image)
        assert (await h.invoke("on-image")).output == b"1"
        zygote = rt.info()["zygotes"]["img-a"]
        os.kill(zygote, signal.SIGSTOP)  # it stops only once it runs again: the close must wait for it
        try:
            await rt.remove("on-image")
            closing = asyncio.get_running_loop().create_task(rt.close())
            await asyncio.sleep(0.3)
            assert not closing.done(), "the close ended while the image's zygote was still stopping"
        finally:
            os.kill(zygote, signal.SIGCONT)
        await closing
        _assert_nothing_left(rt, before)
    finally:
        await rt.close()
