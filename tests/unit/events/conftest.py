"""Event fixtures: the gateway app in-process (httpx.ASGITransport) with
InMemoryInfrastructure and a real SQLite store; a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from events_helpers import ECHO, SECRET
from starlette.applications import Starlette

from spanfaas.config import EventSettings, Settings, WebhookConfig
from spanfaas.events.testing import RedisServer
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.store import SQLiteStore


@pytest.fixture
def event_settings() -> EventSettings:
    return EventSettings(max_body=16 * 1024, backoff=0.01, retries=2, webhooks=[WebhookConfig(name="github", secret=SECRET)])


@pytest.fixture
def settings(tmp_path: Path, event_settings: EventSettings) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), async_backoff=0.01, async_retries=1, async_workers=4, events=event_settings)


@pytest.fixture
def store(settings: Settings) -> Iterator[SQLiteStore]:
    s = SQLiteStore(settings.data_path / "spanfaas.db")
    yield s
    s.close()


@pytest.fixture
def infra() -> InMemoryInfrastructure:
    return InMemoryInfrastructure()


@pytest.fixture
def admin_token(store: SQLiteStore) -> str:
    token = bootstrap_admin_token(store)
    assert token is not None
    return token


@pytest.fixture
async def app(settings: Settings, store: SQLiteStore, infra: InMemoryInfrastructure) -> AsyncIterator[Starlette]:
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
def gateway(app: Starlette) -> Gateway:
    gw: Gateway = app.state.gateway
    return gw


@pytest.fixture
async def client(app: Starlette, admin_token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
    ) as c:
        yield c


@pytest.fixture
def deploy(client: httpx.AsyncClient, tmp_path: Path) -> Callable[..., Any]:
    async def deploy(name: str, triggers: str = "", code: str = ECHO) -> dict[str, Any]:
        d = tmp_path / "src" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "handler.py").write_text(code)
        (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n{triggers}')
        r = await client.put(f"/v1/functions/{name}", content=pack_function(d))
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    return deploy


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if not RedisServer.available():
        pytest.skip("redis-server not installed; `make test` (scripts/test-deps.sh) installs it")
    with RedisServer() as server:
        yield server.url
