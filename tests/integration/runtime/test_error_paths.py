"""Error paths: callers that give up, a sandbox that cannot be set up, a version replaced while it starts -- none may hang, leak or misreport."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from tests.integration.runtime.conftest import Harness, require
from tests.procs import alive

pytestmark = pytest.mark.asyncio(loop_scope="module")

SLEEPER = """
import time

def handler(event, context):
    time.sleep(event or 0)
    return 1
"""


async def _cancel_while_running(h: Harness, name: str, timeout: float) -> int:
    """Start a hanging call, cancel its caller while it runs; the instance's pid."""
    pool = h.rt.pool(name)
    call = asyncio.ensure_future(h.invoke(name, b"30", timeout=timeout))
    for _ in range(200):
        running = [i for i in pool._instances.values() if i.active and i.pid > 0]
        if running:
            break
        await asyncio.sleep(0.01)
    assert running
    await asyncio.sleep(0.1)  # it runs the handler now
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return running[0].pid


async def test_a_strict_call_whose_caller_gave_up_still_ends_by_its_timeout(harness: Harness) -> None:
    await harness.deploy("cancel-strict", SLEEPER, "[resources]\ntimeout = 5\n[scaling]\nmax = 1\nprefork = 0\n")
    pid = await _cancel_while_running(harness, "cancel-strict", timeout=0.5)
    for _ in range(150):
        if not alive(pid):
            break
        await asyncio.sleep(0.02)
    assert not alive(pid), "the abandoned call runs past its timeout and holds the function's only instance"
    r = await harness.invoke("cancel-strict", b"0", timeout=3)
    assert r.ok, r.error


async def test_a_strict_call_whose_caller_gave_up_logs_no_unretrieved_error(harness: Harness) -> None:
    # A graceful stop cancels the async invocations still running: the gateway's log
    # said "ERROR asyncio: Future exception was never retrieved ... InstanceLost".
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    try:
        await harness.deploy("cancel-quiet", SLEEPER, "[resources]\ntimeout = 5\n[scaling]\nmax = 1\nprefork = 0\n")
        pid = await _cancel_while_running(harness, "cancel-quiet", timeout=5)
        for _ in range(150):
            if not alive(pid):
                break
            await asyncio.sleep(0.02)
        assert not alive(pid)
        await asyncio.sleep(0.1)  # the connection's loss is seen
        gc.collect()  # a future with an exception nobody retrieved says so when collected
    finally:
        loop.set_exception_handler(previous)
    assert not [ctx for ctx in reported if "never retrieved" in str(ctx.get("message"))], reported


async def test_a_reuse_instance_whose_caller_gave_up_is_not_handed_out_while_it_runs(harness: Harness) -> None:
    await harness.deploy("cancel-reuse", SLEEPER, 'isolation = "reuse"\n[resources]\ntimeout = 5\n[scaling]\nmax = 1\n')
    assert (await harness.invoke("cancel-reuse", b"0")).ok
    pid = await _cancel_while_running(harness, "cancel-reuse", timeout=0.5)
    r = await harness.invoke("cancel-reuse", b"0", timeout=3)
    assert r.ok, r.error  # not queued behind the abandoned 30 s call until its own timeout
    assert not alive(pid)


async def test_a_strict_child_whose_caller_gave_up_before_the_request_went_out_is_given_back(harness: Harness) -> None:
    await harness.deploy("cancel-unsent", SLEEPER, "[resources]\ntimeout = 5\n[scaling]\nmax = 1\nprefork = 1\n")
    pool = harness.rt.pool("cancel-unsent")
    assert (await harness.invoke("cancel-unsent", b"0")).ok
    for _ in range(3):
        for _ in range(200):
            if pool.stats()["idle"] == 1:
                break
            await asyncio.sleep(0.01)
        call = asyncio.ensure_future(harness.invoke("cancel-unsent", b"0"))
        await asyncio.sleep(0)  # it was handed the idle child and made its request, not written yet
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    r = await harness.invoke("cancel-unsent", b"0", timeout=2)
    assert r.ok, r.error
    assert pool.stats()["instances"] <= 2  # max + prefork: none lost from the books


async def test_a_sandbox_that_cannot_be_set_up_is_a_platform_error_not_an_invalid_bundle(sandboxed: Harness) -> None:
    from spanfaas.errors import InfraError, InvalidBundle

    require(sandboxed, "cgroup-memory")
    # network = "host": no spare, so the restart takes the long way, through the cgroup below.
    await sandboxed.deploy("fit-fails", SLEEPER, 'network = "host"\n')
    assert (await sandboxed.invoke("fit-fails", b"0")).ok
    pool = sandboxed.rt.pool("fit-fails")
    pool.stop_template()  # as scale-to-zero does
    cgroup = sandboxed.rt._sandboxes[pool.key].cgroup
    assert cgroup is not None
    cgroup.destroy()  # the function's cgroup is gone: its template cannot join it
    with pytest.raises(InfraError) as caught:
        await sandboxed.invoke("fit-fails", b"0")
    assert not isinstance(caught.value, InvalidBundle)
    assert "cgroup" in caught.value.message


async def test_a_version_replaced_while_its_template_starts_stays_draining(harness: Harness) -> None:
    slow = "import time\ntime.sleep(0.3)\n" + SLEEPER
    await harness.deploy("replaced-starting", slow, "[resources]\ntimeout = 3\n")
    old = harness.rt.pool("replaced-starting")
    old.stop_template()  # as scale-to-zero does
    call = asyncio.ensure_future(harness.invoke("replaced-starting", b"0.2"))
    await asyncio.sleep(0.05)
    assert old.state == "starting"
    await harness.deploy("replaced-starting", SLEEPER, "[resources]\ntimeout = 3\n")
    await asyncio.sleep(0)  # the drain task runs
    assert old.state == "draining"
    seen = []
    for _ in range(100):
        seen.append(old.state)
        if call.done():
            break
        await asyncio.sleep(0.01)
    assert (await call).ok
    assert "ready" not in seen, "a replaced version came back as ready (it would restart its template, fork ahead)"


FORGER = """
import os, stat, struct, time

def handler(event, context):
    # The user's code can reach its instance's socket: write a frame header
    # that claims a body of ``blen`` bytes, and never send it.
    if not event["blen"]:
        return "no forgery"
    frame = struct.pack("<II", 8, event["blen"]) + bytes(8)
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.write(fd, frame)
        except OSError:
            pass
    time.sleep(event["sleep"])
    return "after the forged frame"
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_forged_oversized_frame_is_not_buffered(harness: Harness, isolation: str) -> None:
    """A frame larger than any answer of the instance (over twice its memory) is
    not allocated by the control plane: the instance is stopped, the call
    reported crashed at once, and the function serves again."""
    import json
    import resource
    import time

    name = f"forger-{isolation}"
    await harness.deploy(name, FORGER, f'isolation = "{isolation}"\n[resources]\nmemory = 32\ntimeout = 10\n')
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    started = time.monotonic()
    r = await harness.invoke(name, json.dumps({"blen": 400 << 20, "sleep": 5}).encode())
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024 - before
    assert r.error is not None and r.error.kind == "crashed", r.error
    assert time.monotonic() - started < 4  # stopped, not left to sleep out its call
    assert grown < 200, f"the runtime's peak RSS grew by {grown} MiB"
    r = await harness.invoke(name, json.dumps({"blen": 0, "sleep": 0}).encode())
    assert r.ok, r.error
