"""A template's exit told by its pidfd, before anyone reaps it."""

from __future__ import annotations

import asyncio
import os
import subprocess

from spanfaas.runtime.exitwatch import ExitWatch


async def test_an_exit_is_seen_at_once_and_told_to_whoever_waits() -> None:
    proc = subprocess.Popen(["sleep", "60"])
    watch = ExitWatch(asyncio.get_running_loop())
    try:
        gone = watch.watch(proc.pid)
        assert gone is not None and watch.watch(proc.pid) is gone  # one watch per template
        assert not watch.exited()
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped; the loop has not run
        assert watch.exited()  # read at once, not when the loop gets to it
        await gone
    finally:
        proc.kill()
        proc.wait()
        watch.close()
    assert not watch.exited() and watch.watch(0) is None


async def test_a_template_reaped_already_counts_as_exited() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    watch = ExitWatch(asyncio.get_running_loop())
    gone = watch.watch(proc.pid)
    assert gone is not None and gone.done() and watch.exited()
    watch.close()
