"""A site that answers a call with 503 (Service Unavailable) ran nothing of it -- unless its
answer says the call may have run.  Real sites: gateway processes on loopback.

``eu`` is up (its local runtime answers) but has nowhere to run a function that asks for a
GPU: only its site ``gone`` (a closed port) declares one.  It takes the deploy (kept pending
there) and answers each call 503, having run nothing.  The
call fails over at once, and the start told when the request left is taken back
(``InvokeContext.on_refused``), as for a 429: an async invocation's claim is not left
marked started.  Before, a 503 was taken for a run.

``stopping`` is a site cut short by its own stop with the call running there (its
``stop_grace`` of 1 s): its 503 says ``infra-interrupted`` (the call may have run), and
that start is kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.config import InfraConfig, SchedulerSettings, Settings
from spanfaas.errors import PROBLEM_BASE
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import Bundle, InvokeContext, load_manifest
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import SQLiteStore

from spanning_support import QueuedLocal, free_port, infra_toml, world_readable_dir

ONCE = '''
import asyncio
import os


async def handler(event, context):
    """The first run (on the first site) waits; any later one answers at once."""
    marker = (event or {}).get("marker")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        await asyncio.sleep(60)
    return {"ran": True}
'''


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    d = world_readable_dir("spanfaas-span-503-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def eu(root: Path) -> Iterator[GatewayProcess]:
    """A site up, whose one infrastructure with a GPU is down: it runs nothing of a GPU function, and answers 503."""
    (root / "eu.toml").write_text(infra_toml(
        {"name": "gone", "kind": "remote", "address": f"http://127.0.0.1:{free_port()}", "token": "sf_x", "timeout": 1,
         "gpu": True},
        {"name": "local", "kind": "local", "region": "eu-west"},
    ))  # fmt: skip
    gw = GatewayProcess(root / "eu-data", infra="local", env={"SPANFAAS_CONFIG": str(root / "eu.toml")})
    try:
        yield gw.start()
    finally:
        gw.stop()


def function(root: Path, name: str = "fn", policy: str = "gpu = true") -> Path:
    d = root / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(ONCE)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[resources]\ntimeout = 60\n[policy]\n{policy}\n')
    return d


LOCAL = InfraConfig(name="local", gpu=True)
"""The in-process local: declared with a GPU, so that the function may fail over to it."""


def site(gw: GatewayProcess, name: str = "eu") -> tuple[RemoteInfrastructure, InfraConfig]:
    cfg = InfraConfig(name=name, kind="remote", address=gw.url, token=gw.admin_token or "", region="eu-west", timeout=5)
    return RemoteInfrastructure(cfg), cfg


async def test_a_sites_503_is_no_start_and_the_call_runs_on_the_next_at_once(root: Path, eu: GatewayProcess) -> None:
    d = function(root)
    sp = SpanningInfrastructure([site(eu), (InMemoryInfrastructure("local"), LOCAL)])
    said: list[str] = []
    ctx = InvokeContext(invocation_id="x", on_start=lambda: said.append("start"), on_refused=lambda: said.append("refused"))
    await sp.start()
    try:
        await sp.deploy(load_manifest(d), Bundle(digest="e" * 64, path=str(d)))
        result = await sp.invoke(load_manifest(d), b"{}", ctx)
    finally:
        await sp.close()
    assert result.infra == "local" and result.error is None
    assert said == ["start", "refused", "start"]  # sent to eu, which ran nothing of it (503); run on local
    [tried] = result.tried
    assert tried.startswith("eu: site 'eu' ran nothing of the call (503): no infrastructure can run 'fn' now"), tried
    with httpx.Client(base_url=eu.url, headers=eu.headers) as c:  # what eu answered, as it answered
        r = c.post("/v1/functions/fn/invoke", json={})
    assert r.status_code == 503 and r.json()["type"] == PROBLEM_BASE + "infra-unavailable", r.text


async def test_an_async_run_a_site_answers_503_is_not_left_marked_started(root: Path, eu: GatewayProcess, tmp_path: Path) -> None:
    """As a 429's (test_spanning_refused_calls): the claim goes back as no run should the
    gateway die while the call then waits in local's queue."""
    settings = Settings(data_dir=str(tmp_path / "data"), async_backoff=0.01, async_workers=2)
    store = SQLiteStore(settings.data_path / "spanfaas.db")
    token = bootstrap_admin_token(store)
    assert token is not None

    def started(id: str) -> Any:
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            return db.execute("SELECT status, started FROM invocations WHERE id = ?", (id,)).fetchone()

    local = QueuedLocal("local")
    infra = SpanningInfrastructure([site(eu), (local, LOCAL)])
    app = create_app(settings, store, infra)
    await infra.start()
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw",
                                         headers={"authorization": f"Bearer {token}"}) as c:  # fmt: skip
                assert (await c.put("/v1/functions/fn", content=pack_function(function(root)))).status_code in (200, 201)
                id = (await c.post("/v1/functions/fn/invoke?mode=async", json={})).json()["id"]
                deadline = time.monotonic() + 20
                while not local.waiting.is_set():  # eu answered 503: the call waits in local's queue
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)  # (a mark is written within 50 ms: one on its way lands)
                assert started(id) == ("running", 0)
                assert id not in app.state.gateway.dispatcher._started
                await app.state.gateway.dispatcher.stop(grace=0.05)
    finally:
        await infra.close()
        store.close()


async def test_a_503_of_a_site_cut_short_while_the_call_ran_there_is_kept_a_start(root: Path) -> None:
    """A site that stops with the call running (past its stop_grace) answers 503 too, but says
    the call may have run (``infra-interrupted``): that start stands, and the call fails over."""
    d = function(root, "once", policy="")
    marker = root / "once-ran"
    gw = GatewayProcess(root / "stopping-data", infra="memory", env={"SPANFAAS_STOP_GRACE": "1"})
    gw.start()
    try:
        # (no refresh meanwhile: one would find far's listener closed and cut the call before its answer)
        sp = SpanningInfrastructure(
            [site(gw, "far"), (InMemoryInfrastructure("local"), InfraConfig(name="local"))], SchedulerSettings(refresh_interval=300)
        )
        said: list[str] = []
        ctx = InvokeContext(invocation_id="y", on_start=lambda: said.append("start"), on_refused=lambda: said.append("refused"))
        await sp.start()
        try:
            await sp.deploy(load_manifest(d), Bundle(digest="f" * 64, path=str(d)))
            call = asyncio.create_task(sp.invoke(load_manifest(d), json.dumps({"marker": str(marker)}).encode(), ctx))
            deadline = time.monotonic() + 20
            while not marker.exists():  # it runs on far
                assert time.monotonic() < deadline and not call.done(), gw.log()
                await asyncio.sleep(0.02)
            assert await asyncio.to_thread(gw.stop) == 0
            result = await asyncio.wait_for(call, 30)
        finally:
            await sp.close()
    finally:
        gw.kill()
    assert result.infra == "local" and result.error is None
    assert said == ["start", "start"]  # far's start stands: it may have run there
    [tried] = result.tried
    assert tried.startswith("far: invoking 'once' on site 'far' failed (503) after it may have started there: "), tried
    assert "the gateway stopped during the invocation" in tried, tried
