"""Predictive warm-up on the real runtime: a function called on a regular beat
is kept warm across its idle TTL once its arrival histogram has seen the beat."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.model import InvokeContext, parse_manifest
from spanfaas.runtime import LocalRuntime

pytestmark = pytest.mark.asyncio

BEAT = 0.8  # longer than idle_ttl + a tick: without prediction every call would be cold


async def test_a_regular_caller_is_kept_warm_by_prediction(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    rt = LocalRuntime(Settings(data_dir=str(tmp_path), runtime=RuntimeSettings(sandbox=False, cgroup_root="spanfaas-test")))
    await rt.start()
    try:
        d = tmp_path / "fn"
        d.mkdir()
        (d / "handler.py").write_text(textwrap.dedent("""
            import time
            time.sleep(0.1)
            def handler(event, context):
                return "ok"
        """))
        spec = parse_manifest('name = "beat"\nisolation = "reuse"\n[scaling]\nidle_ttl = 0.2\n')
        await rt.deploy(spec, d)
        trace: list[tuple[float, str, str]] = []
        rt.early.trace = trace
        loop = asyncio.get_running_loop()
        start = loop.time()
        colds = []
        for k in range(6):
            await asyncio.sleep(max(0.0, start + k * BEAT - loop.time()))
            r = await rt.invoke("beat", b"null", InvokeContext(invocation_id=f"beat-{k}"))
            assert r.ok, r.error
            colds.append(r.cold)
        assert colds[1:3] == [True, True], colds  # the idle rule stopped it between the first calls
        assert colds[-1] is False, colds  # then prediction kept it for the expected call
        stats = rt.early_stats()["beat"]
        assert stats.prewarms.get("predict", 0) >= 1 and stats.avoided.get("predict", 0) >= 1, stats
        events = [e for _t, _n, e in sorted(trace)]
        assert events.index("prewarm:predict") < events.index("avoided:predict"), events
    finally:
        await rt.close()
