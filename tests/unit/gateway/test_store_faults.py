"""A SQLite store that cannot write for a while -- its write lock held by another
process past the busy timeout, its disk full -- answers 503 with Retry-After and a
problem that names the cause, not 500; what was accepted before is still recorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.config import Settings
from spanfaas.gateway import pack_function
from spanfaas.store import SQLiteStore
from tests.sqlite_locks import write_lock

pytestmark = pytest.mark.asyncio

BUSY_TIMEOUT = 0.2
UNCAPPED = 1073741823  # SQLite's default max_page_count (before 3.45; newer ones allow more)


class CappedStore(SQLiteStore):
    """The real SQLite store, its database made "full" on demand: ``PRAGMA max_page_count``
    (a setting of each connection) caps the file at its size, and SQLite answers a write
    that needs one more page with SQLITE_FULL, as on a full disk."""

    max_pages: int | None = None

    def _conn(self) -> sqlite3.Connection:
        conn = super()._conn()
        # On every use, not only when the connection is made: each worker thread has its
        # own, made while capped or not, and a cap lifted must be lifted on all of them.
        conn.execute(f"PRAGMA max_page_count = {self.max_pages if self.max_pages is not None else UNCAPPED}")
        return conn

    def fill(self) -> None:
        self.max_pages = int(self._conn().execute("PRAGMA page_count").fetchone()[0])


@pytest.fixture
def store(settings: Settings) -> Iterator[CappedStore]:
    s = CappedStore(settings.data_path / "spanfaas.db", busy_timeout=BUSY_TIMEOUT)
    yield s
    s.close()


def assert_store_unavailable(r: httpx.Response, *words: str) -> dict[str, Any]:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    doc: dict[str, Any] = r.json()
    assert doc["type"].endswith("/store-unavailable") and doc["status"] == 503, doc
    for word in words:
        assert word in doc["detail"], doc
    return doc


async def test_a_write_lock_held_past_the_busy_timeout_is_a_503(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore, fn_dir: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with write_lock(store.path):
        accepted = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "a"})
        assert_store_unavailable(accepted, "locked by another process", f"{BUSY_TIMEOUT:g} s", str(store.path))
        # The operator sees it too, not only the client: one line, no traceback.
        said = [r for r in caplog.records if "answered 503" in r.getMessage()]
        assert said and "locked by another process" in said[0].getMessage() and said[0].exc_info is None
        deployed = await client.put("/v1/functions/hello", content=pack_function(fn_dir()))
        assert_store_unavailable(deployed, "locked")
        assert (await client.get("/v1/functions/hello")).status_code == 200  # reads go on (WAL)
    assert (await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "a"})).status_code == 202


async def test_a_full_disk_is_a_503(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore, fn_dir: Callable[..., Path]
) -> None:
    store.fill()
    big = {"name": "x" * 60_000}  # more than the free room in the file's pages
    accepted = await client.post("/v1/functions/hello/invoke?mode=async", json=big)
    assert_store_unavailable(accepted, "disk is full", str(store.path), "free space")
    store.max_pages = None
    assert (await client.post("/v1/functions/hello/invoke?mode=async", json=big)).status_code == 202


async def test_a_store_error_that_is_a_bug_is_still_a_500(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore
) -> None:
    """Not every OperationalError is the store being unavailable: a query that cannot work
    (here: the table it writes is gone) is SQLITE_ERROR, an internal error."""
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("ALTER TABLE invocations RENAME TO elsewhere")
        r = await client.post("/v1/functions/hello/invoke?mode=async", json={})
    finally:
        other.execute("ALTER TABLE elsewhere RENAME TO invocations")
        other.close()
    assert r.status_code == 500 and "retry-after" not in r.headers
    assert "failed unexpectedly" in r.json()["detail"]


async def test_an_accepted_invocation_is_recorded_once_the_lock_is_let_go(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore
) -> None:
    """The store is locked after the 202: the claim, or the outcome, waits for it (the
    dispatcher and the recorder try again), and nothing accepted is lost."""
    id = (await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "kept"})).json()["id"]
    with write_lock(store.path):
        await asyncio.sleep(1.2)  # more than one try of the recorder and of the dispatcher
        stored = store.get_invocation(id)
        assert stored is not None and stored.status in ("queued", "running")
    deadline = time.monotonic() + 5
    while (view := (await client.get(f"/v1/invocations/{id}")).json())["status"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
    assert view["status"] == "succeeded" and view["result"] == {"hello": "kept"}, view


async def test_a_listing_while_the_store_cannot_write_answers_at_once(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore
) -> None:
    """A sync call's record waits for the store; the listing waited for it too (it flushes
    the recorder first), so while another process held the write lock it hung until the lock
    was let go -- for ever, for a client without a timeout -- though reads go on (WAL)."""
    with write_lock(store.path):
        r = await client.post("/v1/functions/hello/invoke", json={"name": "waiting"})
        assert r.status_code == 200
        id = r.headers["x-spanfaas-invocation-id"]
        listed = await asyncio.wait_for(client.get("/v1/invocations", params={"function": "hello"}), 20)  # a hang guard
        assert listed.status_code == 200, listed.text
        assert [v["id"] for v in listed.json()["invocations"]] == [id]  # the record waiting for the store, shown
        assert listed.json()["invocations"][0]["result"] == {"hello": "waiting"}


CHATTY = "def handler(event, context):\n    print('c' * 1024 * 1024)\n    return event\n"


async def test_a_listing_while_the_store_cannot_write_stays_in_its_byte_budget(
    client: httpx.AsyncClient, fn_dir: Callable[..., Path], store: CappedStore
) -> None:
    """The sync outcomes waiting for the store were added to a page past its byte budget: six
    calls that logged 1 MiB each were one page of 6 MiB (the budget is 4).  A page ends before
    the record that would pass it, whoever holds the record, the store or the gateway."""
    from spanfaas.gateway.listing import PAGE_BYTES

    r = await client.put("/v1/functions/chatty", content=pack_function(fn_dir("chatty", CHATTY)))
    assert r.status_code == 201, r.text
    with write_lock(store.path):
        ids = []
        for i in range(6):
            r = await client.post("/v1/functions/chatty/invoke", json=i)
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-spanfaas-invocation-id"])
        pages: list[list[dict[str, Any]]] = []
        link: str | None = "/v1/invocations?function=chatty&limit=1000"
        while link is not None:
            doc = (await asyncio.wait_for(client.get(link), 20)).json()
            pages.append(doc["invocations"])
            link = doc["next"]
            assert len(pages) < 10, pages
    assert [len(p) for p in pages] == [3, 3], [[len(v["logs"]) for v in p] for p in pages]
    assert all(sum(len(v["logs"]) for v in p) <= PAGE_BYTES for p in pages)
    assert [v["id"] for p in pages for v in p] == ids[::-1]


async def test_every_write_a_locked_store_refuses_is_a_503_the_openapi_lists(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore
) -> None:
    """With the store's write lock held, adding a trigger, publishing an event, creating a token
    or a curated list, or removing a function answered 503 store-unavailable with Retry-After
    (as invoke and deploy do), but the OpenAPI listed no 503 for them: a generated client took
    it for an undocumented answer, and nothing said to retry."""
    doc = (await client.get("/openapi.json")).json()
    trigger = {"function": "hello", "trigger": {"type": "com.example.*"}}
    assert (await client.post("/v1/triggers", json=trigger)).status_code == 201
    event = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "com.example.x"}
    calls = [
        ("POST", "/v1/triggers", "/v1/triggers", {"json": trigger}),
        ("POST", "/v1/events", "/v1/events", {"content": json.dumps(event), "headers": {"content-type": "application/cloudevents+json"}}),
        ("POST", "/v1/tokens", "/v1/tokens", {"json": {"name": "ci", "scopes": ["invoke"]}}),
        ("POST", "/v1/images/lists", "/v1/images/lists", {"json": {"name": "tools"}}),
        ("DELETE", "/v1/functions/{name}", "/v1/functions/hello", {}),
    ]
    with write_lock(store.path):
        for method, path, url, kw in calls:
            r = await client.request(method, url, **kw)
            assert_store_unavailable(r, "locked")
            responses = doc["paths"][path][method.lower()]["responses"]
            assert "503" in responses and "Retry-After" in responses["503"].get("headers", {}), (method, path, sorted(responses))


NEW_VERSION = "def handler(event, context):\n    return {'new': event}\n"


@contextlib.contextmanager
def full(store: CappedStore) -> Iterator[None]:
    store.fill()
    try:
        yield
    finally:
        store.max_pages = None


@pytest.mark.parametrize("fault", ["locked", "full"])
async def test_a_deploy_the_store_cannot_record_leaves_the_version_before_serving(
    client: httpx.AsyncClient, hello: dict[str, object], store: CappedStore, fn_dir: Callable[..., Path], fault: str
) -> None:
    """A deploy puts the new version on the infrastructure, then records it in the store: when
    the store then failed (locked past its busy timeout, full), the client was answered 503 but
    the new version, which no record has, served every call from then on (and was gone after
    a restart).  The version before is put back, and the 503 says so."""
    src = fn_dir(code=NEW_VERSION)
    (src / "data.bin").write_bytes(random.Random(0).randbytes(100_000))  # more than the file's free pages hold, gzipped too
    new = pack_function(src)
    with write_lock(store.path) if fault == "locked" else full(store):
        r = await client.put("/v1/functions/hello", content=new)
        doc = assert_store_unavailable(r, "locked" if fault == "locked" else "disk is full")
        called = await client.post("/v1/functions/hello/invoke", json={"name": "old"})
        assert called.json() == {"hello": "old"}, called.text
        assert doc["detail"].startswith("function 'hello' was not deployed: the store could not record its new version"), doc
        assert "version 1 serves as before" in doc["detail"], doc
    assert (await client.get("/v1/functions/hello")).json()["version"] == 1
    assert (await client.post("/v1/functions/hello/invoke", json={"name": "old"})).json() == {"hello": "old"}
    again = await client.put("/v1/functions/hello", content=new)  # the store back: the deploy goes through
    assert again.status_code == 201 and again.json()["version"] == 2, again.text
    assert (await client.post("/v1/functions/hello/invoke", json=1)).json() == {"new": 1}
