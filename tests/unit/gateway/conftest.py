"""Gateway unit fixtures: the app in-process over httpx.ASGITransport, with
InMemoryInfrastructure and a real SQLite store in a temp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from spanfaas.config import Settings
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.store import SQLiteStore

HELLO = '''
def handler(event, context):
    print("hello log", context.invocation_id)
    if isinstance(event, bytes):
        return event[::-1]
    event = event or {}
    if event.get("fail"):
        raise ValueError("asked to fail")
    return {"hello": event.get("name", "world")}
'''


def write_function(root: Path, name: str = "hello", code: str = HELLO, manifest: str | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(code)
    (d / "spanfaas.toml").write_text(manifest if manifest is not None else f'name = "{name}"\nisolation = "reuse"\n')
    return d


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"), max_payload=64 * 1024, max_bundle=256 * 1024,
        async_backoff=0.01, async_retries=2, async_workers=4,
    )  # fmt: skip


@pytest.fixture
def store(settings: Settings) -> SQLiteStore:
    s = SQLiteStore(settings.data_path / "spanfaas.db")
    yield s  # type: ignore[misc]
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
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gw", headers={"authorization": f"Bearer {admin_token}"}
    ) as c:
        yield c


@pytest.fixture
def fn_dir(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "hello", code: str = HELLO, manifest: str | None = None) -> Path:
        return write_function(tmp_path / "src", name, code, manifest)

    return make


@pytest.fixture
async def hello(client: httpx.AsyncClient, fn_dir: Callable[..., Path]) -> dict[str, object]:
    r = await client.put("/v1/functions/hello", content=pack_function(fn_dir()))
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]
