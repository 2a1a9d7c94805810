"""Early action on the first bytes: a slow upload and a cold start overlap.

A function whose import takes 300 ms, invoked with a body streamed slowly
through a real uvicorn gateway on the real local runtime.  The assertions are
on the order of recorded events, never on durations.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.integration.early_support import SLOW_IMPORT, LiveGateway, live_gateway

pytestmark = pytest.mark.asyncio

GAP = 0.06


async def slow_body(events: list[tuple[float, str, str]], chunks: int) -> AsyncIterator[bytes]:
    """``chunks`` pieces of 100 bytes, ``GAP`` apart (6 chunks: ~300 ms)."""
    yield b'{"data": "'
    for _ in range(chunks):
        await asyncio.sleep(GAP)
        yield b"x" * 100
    events.append((time.monotonic(), "client", "body-sent"))
    yield b'"}'


def order(events: list[tuple[float, str, str]], name: str) -> list[str]:
    """The events about ``name`` (and the client's), oldest first."""
    return [e for _t, who, e in sorted(events) if who in (name, "client")]


async def invoke_slowly(live: LiveGateway, name: str, chunks: int) -> tuple[int, dict[str, str], dict[str, object]]:
    events: list[tuple[float, str, str]] = live.gw.early.trace  # type: ignore[assignment]
    async with live.client() as c:
        body = slow_body(events, chunks)
        r = await c.post(f"/v1/functions/{name}/invoke", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == chunks * 100
    return r.status_code, dict(r.headers), r.json()


async def test_prewarm_on_headers_overlaps_the_cold_start_with_the_upload() -> None:
    async with live_gateway() as live:
        await live.deploy("slow-import", SLOW_IMPORT.format(import_s=0.3), 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
        trace: list[tuple[float, str, str]] = []
        live.gw.early.trace = live.runtime.early.trace = trace

        # Upload (~300 ms) as long as the import (300 ms): the template starts on the
        # headers, so the call finds it starting (or ready), never cold.
        await live.wait_cold("slow-import")
        _, headers, _ = await invoke_slowly(live, "slow-import", chunks=5)
        seen = order(trace, "slow-import")
        assert seen.index("headers") < seen.index("prewarm:headers") < seen.index("body-sent") < seen.index("body"), seen
        assert "overlapped:headers" in seen or "avoided:headers" in seen, seen

        # An upload longer than the template's start (import + fork + sandbox): the
        # template is ready before the body is in, and the call is warm.
        await live.wait_cold("slow-import")
        trace.clear()
        _, headers, _ = await invoke_slowly(live, "slow-import", chunks=8)
        seen = order(trace, "slow-import")
        assert seen.index("headers") < seen.index("prewarm:headers") < seen.index("ready:headers") < seen.index("body"), seen
        assert seen.index("body") < seen.index("avoided:headers"), seen
        assert headers["x-spanfaas-cold"] == "false"
        stats = live.runtime.early_stats()["slow-import"]
        assert stats.prewarms == {"headers": 2} and stats.avoided.get("headers", 0) >= 1 and not stats.wasted

        # Without early action the same call pays upload and import one after the other.
        live.gw.early.enabled = False
        await live.wait_cold("slow-import")
        trace.clear()
        _, headers, _ = await invoke_slowly(live, "slow-import", chunks=8)
        seen = order(trace, "slow-import")
        assert not [e for e in seen if e.startswith("prewarm")], seen
        assert headers["x-spanfaas-cold"] == "true"

        async with live.client() as c:
            metrics = (await c.get("/metrics")).text
        assert 'spanfaas_prewarms_total{function="slow-import",infra="local",trigger="headers"} 2.0' in metrics
        assert 'spanfaas_cold_starts_avoided_total{function="slow-import",infra="local",trigger="headers"}' in metrics


async def test_a_request_that_fails_validation_releases_its_prewarm() -> None:
    async with live_gateway() as live:
        await live.deploy("released", SLOW_IMPORT.format(import_s=0.05), 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
        await live.wait_cold("released")
        trace: list[tuple[float, str, str]] = []
        live.gw.early.trace = live.runtime.early.trace = trace
        async with live.client() as c:
            r = await c.post("/v1/functions/released/invoke", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        seen = order(trace, "released")
        assert seen.index("prewarm:headers") < seen.index("release") < seen.index("released:headers"), seen
        stats = live.runtime.early_stats()["released"]
        assert stats.prewarms == {"headers": 1} and stats.wasted == {"headers": 1} and not stats.avoided
        # Released: the template is under the idle rule again and scales back to zero.
        await live.wait_for(lambda: live.pool("released").state == "ready")
        await live.wait_cold("released")


async def test_a_failed_request_releases_only_a_prewarm_it_started() -> None:
    # Request A's headers start the template; request B arrives while it starts (its
    # prewarm starts nothing) and fails validation.  B used to release A's prewarm:
    # counted wasted, and A's call then counted neither avoided nor overlapped.
    async with live_gateway() as live:
        await live.deploy("shared", SLOW_IMPORT.format(import_s=0.05), 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
        await live.wait_cold("shared")
        trace: list[tuple[float, str, str]] = []
        live.gw.early.trace = live.runtime.early.trace = trace
        gate = asyncio.Event()

        async def held_body() -> AsyncIterator[bytes]:
            yield b'{"data": "'
            await gate.wait()
            yield b'xx"}'

        async with live.client() as c:
            a = asyncio.create_task(
                c.post("/v1/functions/shared/invoke", content=held_body(), headers={"content-type": "application/json"})
            )
            await live.wait_for(lambda: "prewarm:headers" in order(trace, "shared"))
            bad = await c.post("/v1/functions/shared/invoke", content=b"{not json", headers={"content-type": "application/json"})
            assert bad.status_code == 400
            gate.set()
            assert (await a).status_code == 200
        seen = order(trace, "shared")
        assert seen.count("headers") == 2 and not [e for e in seen if e.startswith("release")], seen
        stats = live.runtime.early_stats()["shared"]
        assert stats.prewarms == {"headers": 1} and not stats.wasted, stats
        assert sum(stats.avoided.values()) + sum(stats.overlapped.values()) == 1, stats
