"""A deploy cancelled while its bundle unpacks (its request cut short at a server stop, its
caller gone) leaves nothing of it behind in the data dir: the unpack goes on in its worker
thread after the cancel, and what it made (the unpacked tree, the kept archive) is deleted
once it ends -- never the files of the version that serves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.gateway.bundle_cache import BundleCache, Check
from spanfaas.model import Bundle
from spanfaas.store import sha256

pytestmark = pytest.mark.asyncio

NEW_VERSION = "def handler(event, context):\n    return {'new': event}\n"
WAIT = 30.0  # a guard against a hang, not a threshold


class UnpackGate:
    """Holds the next unpack of ``cache`` after its files are written (in the check of the fresh
    tree, before it is published) until ``open``: the test cancels the deploy meanwhile."""

    def __init__(self, cache: BundleCache, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.left = threading.Event()
        add = cache.add

        def gated_add(data: bytes, user: str, check: Check) -> Bundle:
            def gated(root: Path) -> object:
                self.entered.set()
                self.gate.wait(WAIT)
                return check(root)

            try:
                return add(data, user, gated)
            finally:
                self.left.set()

        monkeypatch.setattr(cache, "add", gated_add)

    def open(self) -> None:
        self.gate.set()


def unpacked(gateway: Gateway) -> set[str]:
    """What the data dir holds of bundles: unpacked trees (and work dirs), and archives."""
    cache = gateway.registry.bundles
    trees = {p.name for p in cache.dir.iterdir()} if cache.dir.is_dir() else set()
    archives = {p.name for p in (cache.blobs.dir / "sha256").glob("*/*")}
    return trees | archives


async def cancel_during_unpack(client: httpx.AsyncClient, gateway: Gateway, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = UnpackGate(gateway.registry.bundles, monkeypatch)
    put = asyncio.create_task(client.put("/v1/functions/hello", content=data))
    assert await asyncio.to_thread(gate.entered.wait, WAIT), "the deploy never unpacked its bundle"
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    gate.open()
    assert await asyncio.to_thread(gate.left.wait, WAIT)
    await gateway.registry.settled()  # (what the cancelled deploy left to let go of)


async def test_a_first_deploy_cancelled_while_it_unpacks_leaves_no_files(
    client: httpx.AsyncClient, gateway: Gateway, fn_dir: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the unpacked tree and the archive stayed, held, until a remove or a restart."""
    data = pack_function(fn_dir())
    await cancel_during_unpack(client, gateway, data, monkeypatch)
    assert unpacked(gateway) == set()
    assert (await client.get("/v1/functions/hello")).status_code == 404
    monkeypatch.undo()
    r = await client.put("/v1/functions/hello", content=data)  # deployed again, it unpacks again
    assert r.status_code == 201, r.text
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "again"})).json() == {"hello": "again"}


async def test_a_redeploy_cancelled_while_it_unpacks_leaves_the_old_versions_files_only(
    client: httpx.AsyncClient, hello: dict[str, object], gateway: Gateway, fn_dir: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = unpacked(gateway)
    assert before >= {str(hello["digest"])}
    data = pack_function(fn_dir(code=NEW_VERSION))
    await cancel_during_unpack(client, gateway, data, monkeypatch)
    assert sha256(data) not in unpacked(gateway)
    assert unpacked(gateway) == before
    assert (await client.get("/v1/functions/hello")).json()["version"] == 1
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "old"})).json() == {"hello": "old"}



async def test_a_deploy_whose_archive_cannot_be_kept_leaves_no_unpacked_tree(
    client: httpx.AsyncClient, hello: dict[str, object], gateway: Gateway, fn_dir: Callable[..., Path]
) -> None:
    """The archive is written after the tree is unpacked: a deploy that fails there (here a file
    where its directory goes) failed, and left the tree behind until a remove or a restart."""
    before = unpacked(gateway)
    data = pack_function(fn_dir(code=NEW_VERSION))
    digest = sha256(data)
    blocker = gateway.registry.bundles.blobs.path(digest).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")  # (not a directory: the archive cannot go there)
    try:
        r = await client.put("/v1/functions/hello", content=data)
        assert r.status_code >= 500, r.text
        assert digest not in unpacked(gateway)
    finally:
        blocker.unlink()
    assert unpacked(gateway) == before
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "old"})).json() == {"hello": "old"}
