"""A remove whose caller gives up: the registry and the runtime still agree."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.early_support import live_gateway

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
