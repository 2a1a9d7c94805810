"""A real gateway in the test's event loop: uvicorn on a loopback socket, the
spanning scheduler over the real local runtime, SQLite.  The test reaches the
parts (``gw``, ``runtime``) to read their traces and pools."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.local import LocalInfrastructure
from spanfaas.runtime import LocalRuntime
from spanfaas.runtime.pool import Pool
from spanfaas.scheduler import SpanningInfrastructure
from spanfaas.store import open_store

SLOW_IMPORT = """
import os, time
time.sleep({import_s})  # a slow import (a big library, a model)
IMPORTED = time.monotonic()

def handler(event, context):
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])
    size = len(event.get("data", "")) if isinstance(event, dict) else 0
    return {{"size": size, "pid": os.getpid()}}
"""


class _QuietServer(uvicorn.Server):
    """uvicorn, minus signal handling (pytest owns the main thread's signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LiveGateway:
    def __init__(self, root: Path, settings: Settings, server: _QuietServer, task: asyncio.Task[Any], token: str) -> None:
        self.root = root
        self.settings = settings
        self.server = server
        self.task = task
        self.gw: Gateway = server.config.app.state.gateway
        infra = self.gw.infra
        assert isinstance(infra, SpanningInfrastructure)
        local = infra.sites[0].infra
        assert isinstance(local, LocalInfrastructure)
        self.runtime: LocalRuntime = local.runtime
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self.headers = {"authorization": f"Bearer {token}"}

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=60, **kw)

    async def deploy(self, name: str, code: str, manifest: str = "") -> None:
        d = self.root / "src" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "handler.py").write_text(textwrap.dedent(code))
        (d / "spanfaas.toml").write_text(f'name = "{name}"\n' + textwrap.dedent(manifest))
        async with self.client() as c:
            r = await c.put(f"/v1/functions/{name}", content=pack_function(d))
            assert r.status_code == 201, r.text

    def pool(self, name: str) -> Pool:
        return self.runtime.pool(name)

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 20.0) -> None:
        """Poll ``cond`` (a state, never a duration) until it holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not cond():
            if loop.time() > deadline:
                raise AssertionError(f"condition not met within {timeout} s")
            await asyncio.sleep(0.02)

    async def wait_cold(self, name: str) -> None:
        await self.wait_for(lambda: self.pool(name).state == "cold")


@contextlib.asynccontextmanager
async def live_gateway(**overrides: Any) -> AsyncIterator[LiveGateway]:
    """Gateway + runtime on a world-readable temp dir (functions run as another uid)."""
    root = Path(tempfile.mkdtemp(prefix="spanfaas-early-"))
    root.chmod(0o755)
    runtime = overrides.pop("runtime", RuntimeSettings(cgroup_root="spanfaas-test"))
    settings = Settings(data_dir=str(root / "data"), host="127.0.0.1", port=0, runtime=runtime, **overrides)
    store = open_store(settings)
    token = bootstrap_admin_token(store)
    assert token
    infra = SpanningInfrastructure.from_settings(settings)
    await infra.start()
    try:
        app = create_app(settings, store, infra)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, http="httptools", lifespan="on", log_level="warning")
        server = _QuietServer(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        try:
            yield LiveGateway(root, settings, server, task, token)
        finally:
            server.should_exit = True
            await task
    finally:
        await infra.close()
        await asyncio.get_running_loop().shutdown_default_executor()
        store.close()
        shutil.rmtree(root, ignore_errors=True)
