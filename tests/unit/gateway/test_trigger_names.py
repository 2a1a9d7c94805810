"""A trigger's name is one trigger's of its function, manifest or API, whichever gateway
writes it and whenever: a deploy and an API add at once, two gateways on one store (the
other's functions seen through the store), a version stored with a clash already.

In-process gateways (httpx.ASGITransport) on InMemoryInfrastructure and a real SQLite
store; the store's own check is tested on SQLite and PostgreSQL in
tests/unit/events/test_store_events.py."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Bundle, FunctionSpec
from spanfaas.store import SQLiteStore
from tests.unit.gateway.conftest import write_function
from tests.unit.gateway.test_coherence import pair

VERSIONED = "def handler(event, context):\n    return VERSION\nVERSION = %d\n"
NIGHTLY = '[[triggers]]\ntype = "a"\n[[triggers]]\nname = "nightly"\nschedule = "0 3 * * *"\n'


class HeldInfra(InMemoryInfrastructure):
    """The in-memory infrastructure, whose deploys wait for ``release`` once ``held``: a
    deploy paused between the gateway's checks and its write to the store."""

    def __init__(self) -> None:
        super().__init__()
        self.held = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        if self.held:
            self.held = False
            self.entered.set()
            await self.release.wait()
        await super().deploy(spec, bundle)


@pytest.fixture
def infra() -> HeldInfra:
    return HeldInfra()


def bundle(tmp_path: Path, version: int, triggers: str = "", name: str = "orders") -> bytes:
    manifest = f'name = "{name}"\nisolation = "reuse"\n{triggers}'
    return pack_function(write_function(tmp_path / f"src-{name}-{version}", name, VERSIONED % version, manifest))


async def test_a_deploy_and_an_api_add_of_one_name_at_once_one_wins_and_the_infra_keeps_what_serves(
    client: httpx.AsyncClient, infra: HeldInfra, tmp_path: Path
) -> None:
    """Each checked the name against the other's before either wrote: a deploy declaring 'nightly'
    (checked, then deploying) and an API add of 'nightly' meanwhile both answered 201, two triggers
    'nightly'.  The store checks as it writes: the add, stored first, wins; the deploy is the 409
    naming both, and the infrastructure serves the version it served before, not the one refused."""
    assert (await client.put("/v1/functions/orders", content=bundle(tmp_path, 1, '[[triggers]]\ntype = "a"\n'))).status_code == 201
    infra.held = True
    deploying = asyncio.ensure_future(client.put("/v1/functions/orders", content=bundle(tmp_path, 2, NIGHTLY)))
    await asyncio.wait_for(infra.entered.wait(), 10)  # checked, deploying
    added = await client.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly", "schedule": "0 4 * * *"}})
    infra.release.set()
    deployed = await deploying
    assert added.status_code == 201, added.text
    api_id = added.json()["id"]
    assert deployed.status_code == 409 and deployed.headers["content-type"] == "application/problem+json", deployed.text
    detail = deployed.json()["detail"]
    assert "'orders:nightly'" in detail and "triggers[1]" in detail and f"'{api_id}'" in detail, detail
    assert f"spanfaas triggers rm {api_id}" in detail, detail
    assert (await client.get("/v1/functions/orders")).json()["version"] == 1
    listed = {(t["id"], t["trigger"]["name"]) for t in (await client.get("/v1/triggers")).json()["triggers"]}
    assert listed == {("orders:0", ""), (api_id, "nightly")}, listed
    r = await client.post("/v1/functions/orders/invoke", json={})
    assert r.status_code == 200 and r.json() == 1, r.text  # version 1 serves, as the store says
    # and once the name is free, the deploy goes through
    assert (await client.delete(f"/v1/triggers/{api_id}")).status_code == 204
    r = await client.put("/v1/functions/orders", content=bundle(tmp_path, 2, NIGHTLY))
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    assert (await client.post("/v1/functions/orders/invoke", json={})).json() == 2


@pytest.mark.parametrize("stale", [False, True], ids=["not-loaded", "older-version-loaded"])
async def test_an_api_add_on_another_gateway_sees_the_manifest_names_of_the_stored_version(
    tmp_path: Path, request: pytest.FixtureRequest, stale: bool
) -> None:
    """Gateway b checked an API trigger's name against the manifests of the functions it had
    loaded: a function deployed through gateway a, which b had not loaded (or whose older version
    it served), took an API trigger named as one its manifest declares.  The store checks."""
    async with pair("sqlite", tmp_path, request, poll_a=60.0, poll_b=60.0) as (a, b):  # b looks only on use
        if stale:
            assert (await a.http.put("/v1/functions/orders", content=bundle(tmp_path, 1))).status_code == 201
            assert (await b.http.post("/v1/functions/orders/invoke", json={})).json() == 1  # b serves version 1
        r = await a.http.put("/v1/functions/orders", content=bundle(tmp_path, 2, NIGHTLY))
        assert r.status_code == 201, r.text
        assert ("orders" in b.gw.registry.functions) is stale and (not stale or b.gw.registry.functions["orders"].version == 1)
        r = await b.http.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "nightly", "schedule": "0 4 * * *"}})
        assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
        assert "'orders:nightly'" in r.json()["detail"] and "manifest" in r.json()["detail"], r.text
        assert await asyncio.to_thread(b.store.list_triggers, "orders") == []
        # a name the stored version does not declare is b's to add
        r = await b.http.post("/v1/triggers", json={"function": "orders", "trigger": {"name": "hourly", "schedule": "0 * * * *"}})
        assert r.status_code == 201, r.text


async def test_an_identical_redeploy_of_a_version_that_clashes_is_a_409_naming_both(
    client: httpx.AsyncClient, store: SQLiteStore, tmp_path: Path
) -> None:
    """A version whose manifest declares the name of an API trigger of its function (stored so by
    an older spanfaas, which let both through at once): deployed again as it is, the deploy
    answered 200, as if all were well, where a new version with that manifest is a 409.  It is
    the same 409, naming both and how to fix it; the version stored stays, and serves."""
    data = bundle(tmp_path, 1, NIGHTLY)
    assert (await client.put("/v1/functions/orders", content=data)).status_code == 201
    with sqlite3.connect(store.path) as db:  # the clash, as an older gateway left it
        db.execute("INSERT INTO triggers (id, function, spec, created_at) VALUES "
                   "('trg_old', 'orders', '{\"name\":\"nightly\",\"schedule\":\"0 4 * * *\"}', 1.0)")  # fmt: skip
    db.close()
    r = await client.put("/v1/functions/orders", content=data)
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json", r.text
    detail = r.json()["detail"]
    assert "'orders:nightly'" in detail and "triggers[1]" in detail and "'trg_old'" in detail, detail
    assert "spanfaas triggers rm trg_old" in detail, detail
    assert (await client.get("/v1/functions/orders")).json()["version"] == 1
    assert (await client.post("/v1/functions/orders/invoke", json={})).json() == 1  # it still serves
    # once the API's is removed, the same bundle is the version stored: 200, nothing new
    assert (await client.delete("/v1/triggers/trg_old")).status_code == 204
    r = await client.put("/v1/functions/orders", content=data)
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
