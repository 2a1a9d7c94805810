"""Coherence: two gateway apps in one process on one real store, each with its own
in-memory infrastructure.  PostgreSQL announces changes (LISTEN/NOTIFY); a SQLite
file the two open as a shared store announces nothing, so only polling finds them.
(Real SQLite stores are owned by one gateway; here both stores are told they are
shared to exercise polling alone.)  Real gateway processes: tests/integration/test_gateway_coherence.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from spanfaas.config import Settings
from spanfaas.gateway import bootstrap_admin_token, create_app, pack_function
from spanfaas.gateway import coherence
from spanfaas.gateway.app import Gateway
from spanfaas.gateway.registry import Registry
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import Bundle, FunctionRecord, FunctionSpec
from spanfaas.store import SQLiteStore, Store, StoreUnavailable, sha256
from tests.unit.gateway.conftest import write_function


VERSIONED = "def handler(event, context):\n    return VERSION\nVERSION = %d\n"


class CountingInfra(InMemoryInfrastructure):
    def __init__(self) -> None:
        super().__init__()
        self.deploys: list[str] = []
        self.removes: list[str] = []

    async def deploy(self, spec: FunctionSpec, bundle: Bundle) -> None:
        await super().deploy(spec, bundle)
        self.deploys.append(spec.name)

    async def remove(self, name: str) -> None:
        await super().remove(name)
        self.removes.append(name)


class Side:
    """One gateway: its app, store, infrastructure and an HTTP client."""

    def __init__(self, app: Starlette, store: Store, infra: CountingInfra, client: httpx.AsyncClient) -> None:
        self.app, self.store, self.infra, self.http = app, store, infra, client

    @property
    def gw(self) -> Gateway:
        gw: Gateway = self.app.state.gateway
        return gw

    async def answer(self, name: str = "fn") -> Any:
        r = await self.http.post(f"/v1/functions/{name}/invoke", json={})
        return r.json() if r.status_code == 200 else r.status_code


def open_shared(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Store]:
    if kind == "postgres":
        from spanfaas.store.postgres import PostgresStore

        url = str(request.getfixturevalue("postgres_db"))
        return lambda: PostgresStore(url)

    def sqlite() -> Store:
        s = SQLiteStore(tmp_path / "shared.db")
        s.exclusive = False  # type: ignore[misc]  # as if shared: polling is all there is
        return s

    return sqlite


@asynccontextmanager
async def side(stack: AsyncExitStack, settings: Settings, store: Store, token: str) -> AsyncIterator[Side]:
    infra = CountingInfra()
    app = create_app(settings, store, infra)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw",
                                     headers={"authorization": f"Bearer {token}"}) as client:  # fmt: skip
            yield Side(app, store, infra, client)


@asynccontextmanager
async def pair(kind: str, tmp_path: Path, request: pytest.FixtureRequest, *, poll_a: float = 0.05,
               poll_b: float = 0.05, data_b: str = "data") -> AsyncIterator[tuple[Side, Side]]:  # fmt: skip
    """Gateways a and b on one store; by default on one data dir (``data_b``: b's own)."""
    opener = open_shared(kind, tmp_path, request)
    stores = [opener(), opener()]
    token = bootstrap_admin_token(stores[0])
    assert token is not None
    base = dict(max_payload=64 * 1024, max_bundle=256 * 1024, async_backoff=0.01, async_workers=4)
    try:
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                side(stack, Settings(data_dir=str(tmp_path / "data"), functions_poll=poll_a, **base), stores[0], token)  # type: ignore[arg-type]
            )
            b = await stack.enter_async_context(
                side(stack, Settings(data_dir=str(tmp_path / data_b), functions_poll=poll_b, **base), stores[1], token)  # type: ignore[arg-type]
            )
            yield a, b
    finally:
        # As the real server does before it closes its store: a store call the stop
        # cancelled may still run in a worker thread (a closed SQLite connection under it
        # crashed the interpreter).
        await asyncio.get_running_loop().shutdown_default_executor()
        for s in stores:
            s.close()


def bundle(tmp_path: Path, version: int, name: str = "fn") -> bytes:
    return pack_function(write_function(tmp_path / f"src-{version}", name, VERSIONED % version))


async def until(cond: Callable[[], Any], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not await cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


@pytest.mark.parametrize(
    ("kind", "poll"),
    [("sqlite", 0.05), pytest.param("postgres", 60.0, marks=pytest.mark.postgres)],
    ids=["polling-alone", "notified-alone"],
)
async def test_deploys_and_removes_through_one_gateway_reach_the_other(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str, poll: float
) -> None:
    async with pair(kind, tmp_path, request, poll_a=poll, poll_b=poll) as (a, b):
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 1))).status_code == 201
        await until(lambda: _is(b.answer(), 1), 2, "b serves version 1")
        assert b.infra.deploys == ["fn"]  # deployed on b ahead of its first call, as at start-up

        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 2))).json()["version"] == 2
        await until(lambda: _is(b.answer(), 2), 2, "b serves version 2")

        assert (await a.http.delete("/v1/functions/fn")).status_code == 204
        await until(lambda: _is(b.answer(), 404), 2, "b answers 404")
        assert b.infra.removes == ["fn"] and "fn" not in b.gw.registry.functions

        # Versions start over after a remove: b tells the new version 1 from the old one.
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 3))).json()["version"] == 1
        await until(lambda: _is(b.answer(), 3), 2, "b serves the new version 1")


async def _is(answer: Any, expected: Any) -> bool:
    return bool(await answer == expected)


async def test_its_own_changes_are_not_applied_twice(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with pair("sqlite", tmp_path, request) as (a, b):
        for v in (1, 2):
            assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, v))).status_code == 201
        await until(lambda: _is(b.answer(), 2), 2, "b serves version 2")
        checks = a.gw.coherence.checks
        await until(lambda: _true(a.gw.coherence.checks >= checks + 3), 2, "a looks again")
        # a's watcher saw the generation move, and found a's cache already in step.
        assert a.infra.deploys == ["fn", "fn"] and a.gw.coherence.generation == b.gw.coherence.generation == 2
        assert b.infra.deploys == ["fn", "fn"] or b.infra.deploys == ["fn"]  # version 1, if b saw it before 2


async def test_a_version_tried_again_is_logged_as_a_retry_not_as_another_gateways_deploy(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On one gateway alone, a function that failed to load at start-up was logged, at each retry,
    as "could not deploy function 'fn' (version 1, deployed through another gateway)": there
    was no other gateway; the retry says it is one."""
    monkeypatch.setattr(coherence, "RETRY", (0.05, 0.2))
    caplog.set_level("INFO", logger="spanfaas.gateway")
    async with pair("sqlite", tmp_path, request, data_b="data-b") as (a, b):
        v1 = bundle(tmp_path, 1)
        await asyncio.to_thread(a.store.put_function, "fn", sha256(v1), FunctionSpec(name="fn", isolation="reuse"))
        await until(lambda: _true("tried again" in caplog.text), 3, "b has tried it again and failed")
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("could not deploy function 'fn'")]
    retried = [f for f in failures if "(version 1, tried again)" in f]
    first = [f for f in failures if "(version 1, deployed through another gateway)" in f]
    assert retried and len(first) <= 2 and len(first) + len(retried) == len(failures), failures  # a first try on each gateway


async def _true(value: bool) -> bool:
    return value


async def test_an_async_invocation_accepted_after_a_deploy_runs_that_version(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """b would see the deploy only at its next look, a minute away (nothing is announced
    on this store): sync calls to b still get version 1, within the documented bound,
    but an async invocation accepted after the deploy runs version 2 on b."""
    async with pair("sqlite", tmp_path, request, poll_a=60.0, poll_b=60.0) as (a, b):
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 1))).status_code == 201
        assert await b.answer() == 1  # b deploys it on first use
        await a.gw.dispatcher.stop()  # only b runs async invocations
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 2))).json()["version"] == 2

        assert await b.answer() == 1  # not seen yet: the bound is functions_poll
        r = await b.http.post("/v1/functions/fn/invoke?mode=async", json={})
        assert r.status_code == 202
        id = r.json()["id"]

        async def done() -> bool:
            view = (await b.http.get(f"/v1/invocations/{id}")).json()
            return bool(view["status"] in ("succeeded", "failed"))

        await until(done, 5, "the async invocation ran")
        view = (await b.http.get(f"/v1/invocations/{id}")).json()
        assert view["status"] == "succeeded" and view["result"] == 2, view
        assert await b.answer() == 2  # the look before the run brought b in step


async def test_a_store_that_cannot_be_read_before_an_async_run_uses_up_none_of_its_retries(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b claims an invocation of a function it has not seen yet (deployed through a), so it
    reads the function from the store before the run.  The store could not answer (SQLite
    locked past its busy timeout, PostgreSQL restarting) more times than async_retries allow:
    each time counted as a failed run, and the invocation failed for good, though nothing
    ran.  Now it waits in the queue, and runs once the store answers, as its first attempt."""
    async with pair("sqlite", tmp_path, request, poll_a=60.0, poll_b=60.0) as (a, b):
        await a.gw.dispatcher.stop()  # only b runs async invocations
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 1))).status_code == 201
        real = b.store.get_function
        retries = b.gw.settings.async_retries
        failures = 2 * (retries + 1) + 2  # more than every run allows (the barrier reads it too)

        def unreadable(name: str) -> Any:
            nonlocal failures
            if failures > 0:
                failures -= 1
                raise StoreUnavailable(
                    f"the store's database {b.store.path} is locked by another process for longer than 0.2 s "  # type: ignore[attr-defined]
                    "(the busy timeout): a program such as a sqlite3 shell or a backup holds a write transaction; "
                    "end it, then try again", retry_after=1,
                )  # fmt: skip
            return real(name)

        monkeypatch.setattr(b.store, "get_function", unreadable)
        r = await a.http.post("/v1/functions/fn/invoke?mode=async", json={})
        assert r.status_code == 202
        id = r.json()["id"]

        async def done() -> bool:
            view = (await b.http.get(f"/v1/invocations/{id}")).json()
            return bool(view["status"] in ("succeeded", "failed"))

        await until(done, 15, "the async invocation ended")
        view = (await b.http.get(f"/v1/invocations/{id}")).json()
        assert failures == 0
        assert view["status"] == "succeeded" and view["result"] == 1 and view["attempts"] == 1, view


async def test_a_version_it_cannot_deploy_is_not_served_in_place_of_the_stored_one(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Version 2 was stored without its bundle (as by a gateway from before the store kept
    bundles, which had it in its own data dir only): b, with a data dir of its own, cannot
    deploy it.  It stops serving the version before and says why, rather than serve it as
    if it were current."""
    async with pair("sqlite", tmp_path, request, data_b="data-b") as (a, b):
        assert (await b.http.put("/v1/functions/fn", content=bundle(tmp_path, 1))).status_code == 201
        assert await b.answer() == 1
        v2 = bundle(tmp_path, 2)
        await asyncio.to_thread(a.store.put_function, "fn", sha256(v2), FunctionSpec(name="fn", isolation="reuse"))
        await until(lambda: _is(b.answer(), 503), 2, "b refuses")
        r = await b.http.post("/v1/functions/fn/invoke", json={})
        detail = r.json()["detail"]
        assert detail.startswith(f"function 'fn' (version 2) could not be deployed on this gateway: InfraUnavailable: the bundle {sha256(v2)[:12]}… ")
        assert f"is neither in the store nor in {tmp_path / 'data-b' / 'blobs'}" in detail and detail.endswith("; deploy the function again")
        assert b.infra.removes == ["fn"] and (await b.infra.info()).functions == 0

        # Deployed again through b: an identical bundle and manifest make no new version, the
        # store gets the bundle it lacked, and both serve it.
        r = await b.http.put("/v1/functions/fn", content=v2)
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["changed"] is False
        assert await b.answer() == 2
        await until(lambda: _is(a.answer(), 2), 2, "a serves version 2")
        assert a.store.missing_blobs() == set()


@pytest.mark.postgres
async def test_concurrent_deploys_through_both_gateways_converge(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with pair("postgres", tmp_path, request) as (a, b):
        bundles = [bundle(tmp_path, v) for v in range(1, 13)]
        for i in range(0, len(bundles), 2):
            ra, rb = await asyncio.gather(
                a.http.put("/v1/functions/fn", content=bundles[i]), b.http.put("/v1/functions/fn", content=bundles[i + 1])
            )
            assert ra.status_code == rb.status_code == 201
        latest = a.store.get_function("fn")
        assert latest is not None and latest.version == 12
        await until(lambda: _serve(a, latest), 2, "a serves the stored version")
        await until(lambda: _serve(b, latest), 2, "b serves the stored version")
        assert await a.answer() == await b.answer()


async def _serve(side: Side, latest: FunctionRecord) -> bool:
    return side.gw.registry.functions.get("fn") == latest


def test_stale_names_what_differs_from_the_store(tmp_path: Path) -> None:
    def rec(name: str, version: int, created_at: float) -> FunctionRecord:
        return FunctionRecord(name=name, version=version, digest="d" * 64, spec=FunctionSpec(name=name), created_at=created_at)

    registry = Registry(Settings(data_dir=str(tmp_path)), store=None, infra=InMemoryInfrastructure())  # type: ignore[arg-type]
    registry.functions = {"same": rec("same", 2, 1.0), "gone": rec("gone", 1, 1.0), "redone": rec("redone", 1, 1.0)}
    stored = [rec("same", 2, 1.0), rec("redone", 1, 5.0), rec("new", 1, 1.0)]
    assert registry.stale(stored) == ["gone", "new", "redone"]


async def test_a_store_one_gateway_owns_is_not_watched(gateway: Gateway, hello: dict[str, object]) -> None:
    """SQLite: nobody else changes it, so nothing polls it and async runs wait for nothing."""
    assert gateway.store.exclusive and not gateway.coherence.enabled
    await gateway.coherence.barrier("hello", time.monotonic())
    await asyncio.sleep(0.1)
    assert gateway.coherence.checks == 0 and gateway.coherence.generation is None


async def test_a_version_it_could_not_deploy_is_tried_again(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once what it lacked is there (here: the version's bundle, which reaches the store),
    b serves the stored version without another deploy."""
    monkeypatch.setattr(coherence, "RETRY", (0.05, 0.2))
    async with pair("sqlite", tmp_path, request, data_b="data-b") as (a, b):
        v1 = bundle(tmp_path, 1)
        await asyncio.to_thread(a.store.put_function, "fn", sha256(v1), FunctionSpec(name="fn", isolation="reuse"))
        await until(lambda: _true("fn" in b.gw.registry.failed), 2, "b has tried and failed")
        assert await b.answer() == 503
        assert await asyncio.to_thread(a.store.put_blob, sha256(v1), v1)
        await until(lambda: _is(b.answer(), 1), 3, "b serves version 1 once its bundle is there")
        assert (await b.http.get("/v1/functions/fn")).json()["version"] == 1
        assert b.infra.deploys.count("fn") == 1 and "fn" not in b.gw.registry.failed


async def _true(value: bool) -> bool:
    return value


# -- bundles travel through the store: each gateway with a data dir of its own -----------


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_a_gateway_with_its_own_data_dir_deploys_what_another_stored(
    tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    async with pair(kind, tmp_path, request, data_b="data-b") as (a, b):
        v1 = bundle(tmp_path, 1)
        assert (await a.http.put("/v1/functions/fn", content=v1)).status_code == 201
        await until(lambda: _is(b.answer(), 1), 2, "b serves version 1")
        assert b.gw.registry.bundles.blobs.get(sha256(v1)) == v1  # fetched, checked, kept in b's own data dir
        assert (tmp_path / "data-b" / "bundles" / sha256(v1) / "handler.py").is_file() or any(
            (tmp_path / "data-b" / "bundles" / sha256(v1)).rglob("handler.py"))  # fmt: skip

        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 2))).json()["version"] == 2
        await until(lambda: _is(b.answer(), 2), 2, "b serves version 2")
        # And the other way round.
        assert (await b.http.put("/v1/functions/fn", content=bundle(tmp_path, 3))).json()["version"] == 3
        await until(lambda: _is(a.answer(), 3), 2, "a serves version 3")


async def test_a_bundle_that_does_not_match_its_digest_is_not_deployed(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async with pair("sqlite", tmp_path, request, data_b="data-b") as (a, b):
        v1, other = bundle(tmp_path, 1), bundle(tmp_path, 2)
        spec = FunctionSpec(name="fn", isolation="reuse")
        await asyncio.to_thread(a.store.put_function, "fn", sha256(v1), spec, bundle=other)  # damaged on its way
        await until(lambda: _true("fn" in b.gw.registry.failed), 2, "b has tried and failed")
        r = await b.http.post("/v1/functions/fn/invoke", json={})
        assert r.status_code == 503
        assert f"the bundle {sha256(v1)[:12]}… in the store does not match its digest (it has {sha256(other)[:12]}…)" in r.json()["detail"]
        assert not b.gw.registry.bundles.blobs.has(sha256(v1)) and not (tmp_path / "data-b" / "bundles" / sha256(v1)).exists()


async def test_an_identical_redeploy_on_a_gateway_behind_the_store_makes_no_new_version(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """b has not seen a's version 2 yet (it looks once a minute, and nothing is announced):
    deploying version 2's bundle through b is a no-op all the same, and b serves it."""
    async with pair("sqlite", tmp_path, request, poll_a=60.0, poll_b=60.0, data_b="data-b") as (a, b):
        assert (await a.http.put("/v1/functions/fn", content=bundle(tmp_path, 1))).status_code == 201
        assert await b.answer() == 1  # b deploys it on first use
        v2 = bundle(tmp_path, 2)
        assert (await a.http.put("/v1/functions/fn", content=v2)).json()["version"] == 2
        assert await b.answer() == 1  # not seen yet

        r = await b.http.put("/v1/functions/fn", content=v2)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["changed"] is False
        assert [v.version for v in b.store.function_versions("fn")] == [1, 2]
        assert await b.answer() == 2  # and b serves the latest version now
        digest = sha256(v2)
        assert b.gw.registry.bundles._holds[digest].users == {"fn": 1}  # one version here runs it
        # A gateway that never served the function: the same.
        assert (await a.http.delete("/v1/functions/fn")).status_code == 204
        assert (await a.http.put("/v1/functions/fn", content=v2)).json()["version"] == 1
        r = await b.http.put("/v1/functions/fn", content=v2)
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["changed"] is False
        assert await b.answer() == 2


async def test_a_remove_deletes_the_bundle_from_the_store_and_from_each_gateways_copy(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with pair("sqlite", tmp_path, request, data_b="data-b") as (a, b):
        v1, v2 = bundle(tmp_path, 1), bundle(tmp_path, 2)
        for data in (v1, v2):
            assert (await a.http.put("/v1/functions/fn", content=data)).status_code == 201
        await until(lambda: _is(b.answer(), 2), 2, "b serves version 2")
        assert (await a.http.delete("/v1/functions/fn")).status_code == 204
        assert a.store.get_blob(sha256(v1)) is None and a.store.get_blob(sha256(v2)) is None
        assert a.gw.registry.bundles.blobs.digests() == [] and _unpacked(tmp_path / "data") == []
        await until(lambda: _is(b.answer(), 404), 2, "b answers 404")
        await until(  # the unpacked copy goes first, then the archive
            lambda: _true(_unpacked(tmp_path / "data-b") == [] and b.gw.registry.bundles.blobs.digests() == []), 2, "b deletes its own copy"
        )


def _unpacked(data: Path) -> list[str]:
    d = data / "bundles"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


async def test_stop_ends_a_watch_woken_as_stop_began(gateway: Gateway) -> None:
    """stop() cancels the watch.  On Python 3.11 ``asyncio.wait_for`` drops a cancellation
    that comes after the wake-up it waits for but before the watch runs again: the watch
    went on looking every ``functions_poll`` and stop(), so the gateway's close, waited
    for it forever."""
    co = gateway.coherence
    stopping: list[asyncio.Task[None]] = []

    class Woken(asyncio.Event):
        async def wait(self) -> bool:  # stop() begins while this wake-up is on its way back
            await super().wait()
            if not stopping:
                asyncio.get_running_loop().call_soon(lambda: stopping.append(asyncio.ensure_future(co.stop())))
            return True

    old, co._wake = co._wake, Woken()
    old.set()  # the watch waits on the old one: from its next round on, on this one
    for _ in range(1000):
        if stopping:
            break
        co._wake.set()  # (the watch clears it before it looks)
        await asyncio.sleep(0.01)
    assert stopping, "the watch never woke"
    done, _ = await asyncio.wait(stopping, timeout=10)  # at once when right; never when wrong
    if not done:  # (cancelled again while it waits, the watch ends: nothing left running)
        stopping[0].cancel()
        await asyncio.gather(stopping[0], return_exceptions=True)
    assert done, "stop() did not end: the watch it cancelled went on"
