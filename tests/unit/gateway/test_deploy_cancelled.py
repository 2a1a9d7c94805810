"""A deploy cancelled while the store records its version (its request cut short at a
server stop, its caller gone) ends whole: the store, what this gateway serves and what the
infrastructure runs agree -- the new version everywhere, or the one before everywhere."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.config import Settings
from spanfaas.gateway import pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import FunctionRecord, FunctionSpec
from spanfaas.store import SQLiteStore
from tests.sqlite_locks import write_lock

pytestmark = pytest.mark.asyncio

NEW_VERSION = "def handler(event, context):\n    return {'new': event}\n"
WAIT = 30.0  # a guard against a hang, not a threshold


class GatedStore(SQLiteStore):
    """The real SQLite store; while ``gate`` is set up, a ``put_function`` waits for the test
    to open it, so the test can cancel the deploy in the middle of its store write."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, busy_timeout=0.2)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.left = threading.Event()

    def put_function(self, name: str, digest: str, spec: FunctionSpec, *, bundle: bytes | None = None) -> FunctionRecord:
        gate = self.gate
        if gate is None:
            return super().put_function(name, digest, spec, bundle=bundle)
        self.entered.set()
        try:
            gate.wait(WAIT)
            return super().put_function(name, digest, spec, bundle=bundle)
        finally:
            self.left.set()


@pytest.fixture
def store(settings: Settings) -> Iterator[GatedStore]:
    s = GatedStore(settings.data_path / "spanfaas.db")
    yield s
    s.gate = None
    s.close()


async def cancelled_deploy(client: httpx.AsyncClient, store: GatedStore, data: bytes, *, refused: bool) -> None:
    """PUT the bundle, cancel the request while the store records the version, then let the
    write go on: to its end (``refused`` False) or to a failure (the database locked)."""
    store.gate = threading.Event()
    put = asyncio.create_task(client.put("/v1/functions/hello", content=data))
    assert await asyncio.to_thread(store.entered.wait, WAIT), "the deploy never reached the store write"
    put.cancel()
    with write_lock(store.path) if refused else contextlib.nullcontext():
        store.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await put
        assert await asyncio.to_thread(store.left.wait, WAIT)
    store.gate = None
    for _ in range(10):  # what the deploy has left to do after its write, if it goes on
        await asyncio.sleep(0)


async def test_a_redeploy_cancelled_while_its_version_is_recorded_serves_the_new_version(
    client: httpx.AsyncClient, hello: dict[str, object], store: GatedStore, gateway: Gateway, fn_dir: Callable[..., Path]
) -> None:
    """Before, the cancel left the store at version 2 and the infrastructure running it, while
    this gateway went on answering with version 1's record (its spec, its version) until a
    restart, and let go of version 2's bundle."""
    await cancelled_deploy(client, store, pack_function(fn_dir(code=NEW_VERSION)), refused=False)
    stored = store.get_function("hello")
    assert stored is not None and stored.version == 2
    assert gateway.registry.functions["hello"] == stored
    assert (await client.get("/v1/functions/hello")).json()["version"] == 2
    assert (await client.post("/v1/functions/hello/invoke", json=1)).json() == {"new": 1}
    assert gateway.registry.bundles.blobs.has(stored.digest)


async def test_a_redeploy_cancelled_whose_version_the_store_refuses_leaves_the_old_one_serving(
    client: httpx.AsyncClient, hello: dict[str, object], store: GatedStore, gateway: Gateway, fn_dir: Callable[..., Path]
) -> None:
    """Before, the new version, which no record has, ran on the infrastructure (every call
    answered by it) while the store and the gateway said version 1: nothing took it back."""
    await cancelled_deploy(client, store, pack_function(fn_dir(code=NEW_VERSION)), refused=True)
    stored = store.get_function("hello")
    assert stored is not None and stored.version == 1
    assert gateway.registry.functions["hello"] == stored
    assert (await client.get("/v1/functions/hello")).json()["version"] == 1
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "old"})).json() == {"hello": "old"}


async def test_a_first_deploy_cancelled_while_its_version_is_recorded_is_served(
    client: httpx.AsyncClient, store: GatedStore, gateway: Gateway, fn_dir: Callable[..., Path]
) -> None:
    """Before, the store had version 1 while this gateway did not serve it (deployed again on
    its first call) and had let go of, and deleted, its copy of the bundle."""
    await cancelled_deploy(client, store, pack_function(fn_dir()), refused=False)
    stored = store.get_function("hello")
    assert stored is not None and stored.version == 1
    assert gateway.registry.functions.get("hello") == stored
    assert gateway.registry.bundles.blobs.has(stored.digest)
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "new"})).json() == {"hello": "new"}


async def test_a_first_deploy_cancelled_whose_version_the_store_refuses_runs_nowhere(
    client: httpx.AsyncClient, store: GatedStore, gateway: Gateway, infra: InMemoryInfrastructure, fn_dir: Callable[..., Path]
) -> None:
    """Before, the infrastructure kept running a function no record has (until a restart)."""
    await cancelled_deploy(client, store, pack_function(fn_dir()), refused=True)
    assert store.get_function("hello") is None
    assert "hello" not in gateway.registry.functions
    assert (await infra.info()).functions == 0
    assert (await client.get("/v1/functions/hello")).status_code == 404


async def test_a_deploy_after_a_cancelled_one_goes_through(
    client: httpx.AsyncClient, hello: dict[str, object], store: GatedStore, fn_dir: Callable[..., Path]
) -> None:
    """The cancelled deploy let go of the function's lock and of its bundle: the same bundle
    deployed again is stored as the next version."""
    data = pack_function(fn_dir(code=NEW_VERSION))
    await cancelled_deploy(client, store, data, refused=True)
    r = await client.put("/v1/functions/hello", content=data)
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert (await client.post("/v1/functions/hello/invoke", json=2)).json() == {"new": 2}
