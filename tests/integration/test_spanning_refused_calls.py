"""A site that answers a call with 429 (its function's queue is full) took the request but
ran nothing: the call overflows to the next infrastructure, and the run it was taken for
when the request left (``InvokeContext.on_start``) is none.  An async invocation's claim was
marked started in the store all the same, so a gateway that died while the call then waited
(in local's queue) left it counted as a re-run (``CRASH_RERUNS``), not a claim given back.
A real HTTP server on loopback (``StubSite``) is the full site; a real gateway app and
SQLite store run the invocation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from spanfaas.config import InfraConfig, Settings
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.infra.remote import RemoteInfrastructure
from spanfaas.model import Bundle, InvokeContext, parse_manifest
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import SQLiteStore

from spanning_support import Answer, QueuedLocal, StubSite

JSON = {"content-type": "application/json"}
INFO = (200, JSON, json.dumps({"infrastructures": [{"name": "local", "kind": "local", "region": "eu-west"}]}).encode())
FULL = (429, {"content-type": "application/problem+json", "retry-after": "1"},
        b'{"status": 429, "title": "Too many requests", "detail": "function fn is full"}')  # fmt: skip


def deployed(sent: bytes) -> Answer:
    name = "fn"
    return 201, JSON, json.dumps({"name": name, "version": 1, "digest": hashlib.sha256(sent).hexdigest()}).encode()


async def test_a_call_a_site_answers_429_is_no_start_and_runs_on_the_next(tmp_path: Path) -> None:
    """Through the spanning scheduler: the site's start is taken back, the next runs it."""
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text("def handler(event, context):\n    return event\n")
    with StubSite() as site:
        site.answers[("GET", "/v1/info")] = INFO
        site.answers[("PUT", "/v1/functions/fn")] = deployed
        site.answers[("POST", "/v1/functions/fn/invoke")] = FULL
        cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
        sp = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (InMemoryInfrastructure("local"), InfraConfig(name="local"))])
        spec = parse_manifest('name = "fn"\nisolation = "reuse"\n')
        said: list[str] = []
        ctx = InvokeContext(invocation_id="x", on_start=lambda: said.append("start"), on_refused=lambda: said.append("refused"))
        await sp.start()
        try:
            await sp.deploy(spec, Bundle(digest="d" * 64, path=str(fn)))
            result = await sp.invoke(spec, b"{}", ctx)
        finally:
            await sp.close()
        assert ("POST", "/v1/functions/fn/invoke") in site.seen
    assert result.infra == "local" and result.error is None
    assert said == ["start", "refused", "start"]  # sent to eu (a start, as far as we could tell), refused, run on local
    [tried] = result.tried
    assert tried.startswith("eu: site 'eu' is full: function fn is full"), tried
    assert sp.site("eu").failures == 0 and sp.site("eu").breaker.state == "closed"


async def test_an_async_run_a_site_answers_429_is_not_left_marked_started(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), async_backoff=0.01, async_workers=2)
    store = SQLiteStore(settings.data_path / "spanfaas.db")
    token = bootstrap_admin_token(store)
    assert token is not None

    def started(id: str) -> Any:
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            return db.execute("SELECT status, started FROM invocations WHERE id = ?", (id,)).fetchone()

    ids: list[str] = []

    def full_once_marked(sent: bytes) -> Answer:
        deadline = time.monotonic() + 10  # the start of the run is in the store before the 429 comes
        while not ids or started(ids[0]) != ("running", 1):
            if time.monotonic() > deadline:
                return 500, {}, b"the start was never marked"
            time.sleep(0.01)
        return FULL

    with StubSite() as site:
        site.answers[("GET", "/v1/info")] = INFO
        site.answers[("PUT", "/v1/functions/fn")] = deployed
        site.answers[("POST", "/v1/functions/fn/invoke")] = full_once_marked
        cfg = InfraConfig(name="eu", kind="remote", address=site.url, region="eu-west", timeout=5)
        local = QueuedLocal("local")
        infra = SpanningInfrastructure([(RemoteInfrastructure(cfg), cfg), (local, InfraConfig(name="local"))])
        fn = tmp_path / "src" / "fn"
        fn.mkdir(parents=True)
        (fn / "handler.py").write_text("def handler(event, context):\n    return event\n")
        (fn / "spanfaas.toml").write_text('name = "fn"\nisolation = "reuse"\n')
        app = create_app(settings, store, infra)
        await infra.start()  # (as the gateway's server does, before the app)
        try:
            async with app.router.lifespan_context(app):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw",
                                             headers={"authorization": f"Bearer {token}"}) as c:  # fmt: skip
                    assert (await c.put("/v1/functions/fn", content=pack_function(fn))).status_code == 201
                    ids.append((await c.post("/v1/functions/fn/invoke?mode=async", json={})).json()["id"])
                    deadline = time.monotonic() + 10
                    while not local.waiting.is_set():  # eu answered 429: the call waits in local's queue
                        assert time.monotonic() < deadline, site.seen
                        await asyncio.sleep(0.02)
                    while (row := started(ids[0])) != ("running", 0):  # and its claim is not a started run
                        assert time.monotonic() < deadline, row
                        await asyncio.sleep(0.02)
                    assert ids[0] not in app.state.gateway.dispatcher._started
                    await app.state.gateway.dispatcher.stop(grace=0.05)
        finally:
            await infra.close()
            store.close()
