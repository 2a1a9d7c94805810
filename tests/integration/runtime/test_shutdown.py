"""A runtime that closes leaves nothing behind, however its close is interrupted,
and whatever it was draining or removing at the time."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, runtime_settings
from tests.integration.runtime.test_cleanup import cgroup_dirs, descendants

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
