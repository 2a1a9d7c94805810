"""A remove whose caller gives up: the registry and the runtime still agree."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.early_support import live_gateway
from tests.procs import alive

pytestmark = pytest.mark.asyncio

SLEEPS = """
import time

def handler(event, context):
    time.sleep(event["sleep"])
    return "slept"
"""


async def test_a_remove_given_up_while_it_drains_still_removes_the_function() -> None:
    """A remove waits for what runs; its caller may give up first (a client that
    disconnects, a timeout).  The runtime has let go of the function by then: the remove
    must complete (the function is not found, here and in the store), not leave the
    registry serving a function the runtime no longer has (every call then failing)."""
    async with live_gateway() as live:
        await live.deploy("drained", SLEEPS, 'isolation = "reuse"\n')
        registry = live.gw.registry
        async with live.client() as c:
            call = asyncio.ensure_future(c.post("/v1/functions/drained/invoke", json={"sleep": 1.0}))
            await live.wait_for(lambda: live.pool("drained").stats()["busy"] == 1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(registry.remove("drained"), 0.1)
            r = await call
            assert r.status_code == 200, r.text  # what ran before the remove finished
            await live.wait_for(lambda: "drained" not in live.runtime.functions())
            for _ in range(200):  # the remove goes on without its caller, and ends
                r = await c.get("/v1/functions/drained")
                if r.status_code == 404:
                    break
                await asyncio.sleep(0.05)
            assert r.status_code == 404, r.text
            r = await c.post("/v1/functions/drained/invoke", json={"sleep": 0})
            assert r.status_code == 404, r.text


async def test_a_stop_cancelled_while_it_drains_still_stops_the_template_and_its_cgroup() -> None:
    """The function was removed through another gateway: this one stops it (Registry._stop,
    through reconcile) and waits for what runs.  That wait is cancelled (the coherence task
    ends, the gateway shuts down): the removal goes on without it (the infrastructure never
    cuts a drain short), and the function's template and cgroup still go when its call ends."""
    async with live_gateway() as live:
        await live.deploy("stopped", SLEEPS, 'isolation = "reuse"\n')
        registry = live.gw.registry
        pool = live.pool("stopped")
        async with live.client() as c:
            call = asyncio.ensure_future(c.post("/v1/functions/stopped/invoke", json={"sleep": 1.0}))
            await live.wait_for(lambda: pool.stats()["busy"] == 1)
            template = pool.template_pid
            assert template > 0 and alive(template)
            await asyncio.to_thread(registry.store.delete_function, "stopped")  # as another gateway does
            stopping = asyncio.ensure_future(registry.reconcile("stopped"))
            await live.wait_for(lambda: pool.state == "draining")
            stopping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stopping
            r = await call
            assert r.status_code == 200, r.text  # what ran before the stop finished
            await live.wait_for(lambda: pool.state == "closed" and not alive(template))
            assert "stopped" not in live.runtime.functions()
            assert pool.key not in live.runtime._sandboxes, "the function's cgroup was left behind"
