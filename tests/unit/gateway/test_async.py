"""Async invocations: committed before 202, dispatched, retried, idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from spanfaas.client.operations import error_from_record
from spanfaas.config import Settings
from spanfaas.errors import FunctionNotFound
from spanfaas.gateway import create_app, pack_function
from spanfaas.gateway.app import Gateway
from spanfaas.gateway.dispatcher import CRASH_RECLAIMS, CRASH_RERUNS
from spanfaas.infra.memory import InMemoryInfrastructure
from spanfaas.model import InvocationRecord
from spanfaas.store import SQLiteStore

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def _gateway(
    settings: Settings, store: SQLiteStore, infra: Any, token: str, *, lease: float | None = None
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A gateway app over ``store`` and ``infra``, started, with an admin client."""
    app = create_app(settings, store, infra)
    if lease is not None:
        app.state.gateway.dispatcher.lease = lease  # before the start: the heartbeat paces itself on it
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw",
                                     headers={"authorization": f"Bearer {token}"}) as c:  # fmt: skip
            yield app, c


async def wait_done(client: httpx.AsyncClient, id: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = (await client.get(f"/v1/invocations/{id}")).json()
        if view["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return view
        await asyncio.sleep(0.02)


async def test_async_is_in_the_store_before_202(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore) -> None:
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "a"})
    assert r.status_code == 202
    id = r.json()["id"]
    assert r.json()["status"] == "queued"
    assert r.headers["location"] == f"/v1/invocations/{id}"
    assert store.get_invocation(id) is not None  # committed when the 202 was sent
    view = await wait_done(client, id)
    assert view["status"] == "succeeded" and view["mode"] == "async" and view["result"] == {"hello": "a"}
    assert view["attempts"] == 1 and "hello log" in view["logs"]


async def test_prefer_respond_async(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke", json={}, headers={"prefer": "respond-async, wait=5"})
    assert r.status_code == 202
    assert (await wait_done(client, r.json()["id"]))["status"] == "succeeded"


async def test_idempotency_key_returns_the_same_id(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure) -> None:
    h = {"idempotency-key": "order-42"}
    ids = [(await client.post("/v1/functions/hello/invoke?mode=async", json={"n": 42}, headers=h)).json()["id"] for _ in range(3)]
    assert len(set(ids)) == 1
    await wait_done(client, ids[0])
    await asyncio.sleep(0.1)
    assert infra.invocations == 1


async def test_an_idempotency_key_sent_again_with_another_payload_is_refused(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    h = {"idempotency-key": "order-43"}
    first = await client.post("/v1/functions/hello/invoke?mode=async", json={"n": 1}, headers=h)
    again = await client.post("/v1/functions/hello/invoke?mode=async", json={"n": 1}, headers=h)
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = await client.post("/v1/functions/hello/invoke?mode=async", json={"n": 2}, headers=h)
    assert other.status_code == 422 and other.headers["content-type"].startswith("application/problem+json")
    assert first.json()["id"] in other.json()["detail"] and "send a new key" in other.json()["detail"]
    await wait_done(client, first.json()["id"])


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_an_idempotency_key_empty_or_too_long_is_refused(client: httpx.AsyncClient, hello: dict[str, object], key: str) -> None:
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={}, headers={"idempotency-key": key})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
    assert f"is {len(key)} characters long; send 1 to 255" in r.json()["detail"]


async def test_an_idempotency_key_on_a_sync_invocation_is_refused(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, gateway: Gateway, store: SQLiteStore) -> None:
    """It was ignored: a retry with the same key ran the function again, which the key was sent to prevent."""
    r = await client.post("/v1/functions/hello/invoke", json={}, headers={"idempotency-key": "order-44"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert "Idempotency-Key" in r.json()["detail"] and "mode=async" in r.json()["detail"]
    assert infra.invocations == 0  # refused before it ran
    await gateway.recorder.flush()
    assert store.list_invocations() == []


@pytest.mark.parametrize(
    ("query", "prefer", "named"),
    [
        ("?mode=sync&mode=async", None, ("mode=sync", "mode=async")),
        ("?mode=async&mode=sync", None, ("mode=async", "mode=sync")),
        ("?mode=sync", "respond-async", ("mode=sync", "Prefer: respond-async")),
    ],
)
async def test_contradictory_modes_are_refused(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure, query: str, prefer: str | None, named: tuple[str, str]) -> None:
    """The last word won (or the query beat the header) without a word: the caller may have got
    a 202 it did not expect, or a function run and waited on that it meant to queue."""
    headers = {"prefer": prefer} if prefer else {}
    r = await client.post(f"/v1/functions/hello/invoke{query}", json={}, headers=headers)
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json"), r.text
    assert all(n in r.json()["detail"] for n in named), r.json()["detail"]
    assert infra.invocations == 0


async def test_modes_that_agree_are_taken(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    r = await client.post("/v1/functions/hello/invoke?mode=async&mode=async", json={}, headers={"prefer": "respond-async"})
    assert r.status_code == 202, r.text
    await wait_done(client, r.json()["id"])
    r = await client.post("/v1/functions/hello/invoke?mode=sync&mode=sync", json={})
    assert r.status_code == 200 and r.json() == {"hello": "world"}


async def test_prefer_respond_async_in_any_prefer_header(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    """Only the last Prefer header was read: respond-async in an earlier one was dropped (RFC 7240 allows several)."""
    r = await client.post("/v1/functions/hello/invoke", json={}, headers=[("prefer", "respond-async"), ("prefer", "wait=5")])
    assert r.status_code == 202, r.text
    await wait_done(client, r.json()["id"])


@pytest.mark.parametrize(
    ("prefer", "is_async"),
    [
        ("respond-async", True),
        ("Respond-Async", True),  # (preference names are case-insensitive)
        ("wait=5,respond-async", True),
        ("  wait = 5 ,  respond-async ; x=y", True),
        ('handling=lenient, respond-async; note="a, b", return=minimal', True),
        ("respond-asyncx", False),
        ("x-respond-async", False),
        ('foo="respond-async"', False),
        ('foo="a, respond-async"', False),
        ('foo="a \\", respond-async"', False),  # an escaped quote does not end the string
        ("wait=5; respond-async", False),  # a parameter of wait, not a preference
        ("return=respond-async", False),
    ],
)
async def test_prefer_is_parsed_not_searched(client: httpx.AsyncClient, hello: dict[str, object], prefer: str, is_async: bool) -> None:
    """``respond-async`` was found anywhere in a Prefer header: in ``respond-asyncx``, in a quoted
    value or in another preference's parameter.  It counts only as a preference (RFC 7240:
    comma-separated, each a token with an optional value, then its ;parameters)."""
    r = await client.post("/v1/functions/hello/invoke", json={}, headers={"prefer": prefer})
    assert r.status_code == (202 if is_async else 200), (prefer, r.text)
    if is_async:
        await wait_done(client, r.json()["id"])


async def test_platform_failures_are_retried(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure) -> None:
    infra.fail_next = 2  # async_retries = 2 → the third attempt runs
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "r"})
    view = await wait_done(client, r.json()["id"])
    assert view["status"] == "succeeded" and view["attempts"] == 3 and view["result"] == {"hello": "r"}


async def test_failed_attempts_of_an_invocation_that_succeeded_are_retries_not_failures(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure
) -> None:
    """An async invocation whose first two runs failed on the platform and whose third
    succeeded was counted in spanfaas_invocations_total as 2 failed and 1 succeeded (and 2
    infra errors): one invocation, which succeeded, read as a failure rate of 2/3.  Its
    failed attempts are retries: spanfaas_invocation_retries_total."""
    infra.fail_next = 2  # async_retries = 2 → the third attempt runs
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "r"})
    view = await wait_done(client, r.json()["id"])
    assert view["status"] == "succeeded" and view["attempts"] == 3, view
    metrics = (await client.get("/metrics")).text
    assert 'spanfaas_invocations_total{function="hello",status="succeeded"} 1.0' in metrics, metrics
    assert 'status="failed"' not in metrics and "spanfaas_invocation_errors_total{" not in metrics, metrics
    assert 'spanfaas_invocation_retries_total{function="hello",kind="infra"} 2.0' in metrics, metrics


async def test_a_full_function_queue_makes_an_async_invocation_wait_not_fail(
    client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure
) -> None:
    """An accepted async invocation failed for good (attempts 1, 'TooManyRequests: function has N
    invocations waiting (scaling.queue = N)') when the function's queue was full at that moment:
    a burst over scaling.max + scaling.queue lost the invocations the durable queue had accepted.
    Now it goes back to the queue and runs once there is room; the refusals are not runs."""
    from spanfaas.errors import TooManyRequests

    real = infra.invoke
    refusals = 0

    async def busy(spec: Any, payload: bytes, ctx: Any) -> Any:
        nonlocal refusals
        if refusals < 5:  # more than async_retries: these are not platform failures
            refusals += 1
            raise TooManyRequests("function 'hello' has 1 invocation waiting (scaling.queue = 1); retry later or raise scaling.max")
        return await real(spec, payload, ctx)

    infra.invoke = busy  # type: ignore[method-assign]
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "later"})
    view = await wait_done(client, r.json()["id"], timeout=10)
    assert view["status"] == "succeeded" and view["result"] == {"hello": "later"}, view
    assert refusals == 5 and view["attempts"] == 1, view


async def test_retries_run_out(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure) -> None:
    infra.fail_next = 10
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={})
    view = await wait_done(client, r.json()["id"])
    assert view["status"] == "failed" and view["attempts"] == 3
    assert view["error"]["kind"] == "infra" and "injected" in view["error"]["message"]
    metrics = (await client.get("/metrics")).text  # the last failure ends it: one failed invocation
    assert 'spanfaas_invocations_total{function="hello",status="failed"} 1.0' in metrics, metrics
    assert 'spanfaas_invocation_errors_total{function="hello",kind="infra"} 1.0' in metrics, metrics
    assert 'spanfaas_invocation_retries_total{function="hello",kind="infra"} 2.0' in metrics, metrics


async def test_function_errors_are_not_retried(client: httpx.AsyncClient, hello: dict[str, object], infra: InMemoryInfrastructure) -> None:
    r = await client.post("/v1/functions/hello/invoke?mode=async", json={"fail": True})
    view = await wait_done(client, r.json()["id"])
    assert view["status"] == "failed" and view["attempts"] == 1
    assert view["error"]["kind"] == "error" and view["error"]["type"] == "ValueError"
    assert "raise ValueError" in view["error"]["traceback"]


async def test_removed_function_fails_without_retry(client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore) -> None:
    store.enqueue(InvocationRecord(id="orphan", function="ghost", status="queued", mode="async", created_at=time.time()))
    client_app = client._transport.app  # type: ignore[attr-defined]
    client_app.state.gateway.dispatcher.wake()
    view = await wait_done(client, "orphan")
    assert view["status"] == "failed" and view["attempts"] == 1 and "not found" in view["error"]["message"]


async def test_many_concurrent_async(client: httpx.AsyncClient, hello: dict[str, object]) -> None:
    rs = await asyncio.gather(*(client.post("/v1/functions/hello/invoke?mode=async", json={"name": str(i)}) for i in range(100)))
    assert all(r.status_code == 202 for r in rs)
    views = [await wait_done(client, r.json()["id"]) for r in rs]
    assert [v["result"] for v in views] == [{"hello": str(i)} for i in range(100)]


async def test_start_up_takes_back_running_records(settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]) -> None:
    """A gateway that died mid-run left a 'running' record: the next one runs it."""
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
    store.enqueue(InvocationRecord(id="left", function="hello", status="queued", mode="async", payload=b'{"name":"again"}', created_at=time.time()))
    [left] = store.claim(time.time(), 3600, 10, owner="dead")  # as if a dead gateway had it, with a long lease,
    store.mark_started({left.id: "dead"})  # and had started its run
    async with _gateway(settings, store, InMemoryInfrastructure(), admin_token) as (app, c):
        view = await wait_done(c, "left")
    assert view["status"] == "succeeded" and view["attempts"] == 2 and view["result"] == {"hello": "again"}


class _BrokenPipeOnce(InMemoryInfrastructure):
    """An adapter whose first call fails with something other than a SpanfaasError (a lost pipe)."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times

    async def invoke(self, spec: Any, payload: bytes, ctx: Any) -> Any:
        if self.times > 0:
            self.times -= 1
            self.invocations += 1
            raise BrokenPipeError(32, "Broken pipe")
        return await super().invoke(spec, payload, ctx)


@pytest.mark.parametrize("times, status, attempts", [(1, "succeeded", 2), (10, "failed", 3)])
async def test_an_unexpected_platform_error_is_retried_within_the_limit(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], times: int, status: str, attempts: int
) -> None:
    """Not left 'running' until its lease runs out (30 s), then run again without limit."""
    infra = _BrokenPipeOnce(times)
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        r = await c.post("/v1/functions/hello/invoke?mode=async", json={"name": "p"})
        view = await wait_done(c, r.json()["id"])
    assert view["status"] == status and view["attempts"] == attempts, view
    assert infra.invocations == attempts
    if status == "failed":
        assert view["error"]["kind"] == "infra" and "BrokenPipeError" in view["error"]["message"]


def _crash_claims(store: SQLiteStore, id: str, times: int, *, started: bool = True) -> None:
    """As if ``times`` gateways in a row claimed ``id`` and died running it (``started``),
    or died while it waited to run (in its function's queue, for a deploy)."""
    for _ in range(times):
        assert [r.id for r in store.claim(time.time(), 3600, 10, owner="dead")] == [id]
        if started:
            store.mark_started({id: "dead"})
        assert store.requeue_running() == 1  # the next gateway's start-up


@pytest.mark.parametrize("crashes, status", [(CRASH_RECLAIMS, "succeeded"), (CRASH_RECLAIMS + 1, "failed")])
async def test_an_invocation_that_only_waited_through_crashes_is_no_rerun(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], crashes: int, status: str
) -> None:
    """Claimed by gateways that died while it waited (behind a slow call in its function's
    queue), it never ran: no re-run, no attempt, and CRASH_RERUNS does not end it; claims
    given back so have their own, larger bound (a start not yet marked when its gateway
    died is counted so: the guard against a function that takes the gateway down holds)."""
    assert CRASH_RECLAIMS > CRASH_RERUNS + 1
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
    store.enqueue(InvocationRecord(id="patient", function="hello", status="queued", mode="async", payload=b"{}", created_at=time.time()))
    _crash_claims(store, "patient", crashes, started=False)
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        view = await wait_done(c, "patient")
    assert (view["status"], view["reruns"], view["reclaims"]) == (status, 0, crashes), view
    if status == "succeeded":
        assert view["attempts"] == 1 and infra.invocations == 1
    else:
        assert view["attempts"] == 0 and infra.invocations == 0
        assert f"{crashes} claims ended before their run was marked started" in view["error"]["message"]


async def test_a_run_that_starts_is_marked_so_in_the_store(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """The infrastructure says when the run starts (``InvokeContext.on_start``); the
    dispatcher marks it in the store, in a write of its own off the call's path: a gateway
    that dies now leaves a re-run."""
    infra = _Hangs()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={})).json()["id"]
        owner = app.state.gateway.dispatcher.owner
        marked = None
        for _ in range(500):
            with contextlib.closing(sqlite3.connect(store.path)) as db:
                marked = db.execute("SELECT started, owner FROM invocations WHERE id = ?", (id,)).fetchone()
            if marked is not None and marked[0] == 1 and (marked[1] or "").startswith(f"{owner}."):
                break
            await asyncio.sleep(0.01)
        # (the owner of that claim: the gateway's, and the claim's number)
        assert infra.invocations == 1 and marked is not None and marked[0] == 1 and (marked[1] or "").startswith(f"{owner}."), marked


@pytest.mark.parametrize("crashes, status", [(3, "succeeded"), (4, "failed")])
async def test_an_invocation_the_gateway_keeps_dying_on_is_not_run_for_ever(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], crashes: int, status: str
) -> None:
    """At least once across crashes, but at most CRASH_RERUNS (3) runs again after
    a start that left no outcome: one that takes the gateway down every time ends."""
    from spanfaas.gateway.dispatcher import CRASH_RERUNS

    assert CRASH_RERUNS == 3
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
    store.enqueue(InvocationRecord(id="pill", function="hello", status="queued", mode="async", payload=b"{}", created_at=time.time()))
    _crash_claims(store, "pill", crashes)
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        view = await wait_done(c, "pill")
    assert view["status"] == status and view["attempts"] == crashes + 1 and view["reruns"] == crashes, view
    if status == "failed":
        assert infra.invocations == 0 and "4 runs ended without a stored outcome" in view["error"]["message"]


async def test_a_crash_rerun_does_not_use_up_the_retries(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """async_retries are for platform failures of a run (InfraError); a run started again
    because the gateway died during an earlier one took one of them, so an invocation
    whose gateway crashed once got one retry fewer than configured."""
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
    store.enqueue(InvocationRecord(id="bumpy", function="hello", status="queued", mode="async", payload=b"{}", created_at=time.time()))
    _crash_claims(store, "bumpy", 1)
    infra = InMemoryInfrastructure()
    infra.fail_next = settings.async_retries  # every retry is needed
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        view = await wait_done(c, "bumpy")
    assert view["status"] == "succeeded" and infra.invocations == settings.async_retries + 1, view
    assert view["attempts"] == settings.async_retries + 2 and view["reruns"] == 1


class _Hangs(InMemoryInfrastructure):
    async def invoke(self, spec: Any, payload: bytes, ctx: Any) -> Any:
        self.invocations += 1
        if ctx.on_start is not None:
            ctx.on_start()
        await asyncio.Event().wait()


async def test_a_graceful_stop_gives_the_run_back_uncounted(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    infra = _Hangs()
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={})).json()["id"]
        for _ in range(500):
            if infra.invocations:
                break
            await asyncio.sleep(0.01)
        assert infra.invocations == 1
        await app.state.gateway.dispatcher.stop(grace=0.05)  # what the lifespan's end does, with stop_grace (10 s) of grace
    record = store.get_invocation(id)
    assert record is not None and record.status == "queued" and record.attempts == 0


class _Held(InMemoryInfrastructure):
    """Runs each call (started) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def invoke(self, spec: Any, payload: bytes, ctx: Any) -> Any:
        self.invocations += 1
        if ctx.on_start is not None:
            ctx.on_start()
        await self.release.wait()
        return await super().invoke(spec, payload, ctx)


async def test_a_stop_keeps_the_leases_of_the_runs_it_gives_their_grace(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """The heartbeat ended as the stop began: a run given a grace longer than its lease lost
    its claim meanwhile, and another gateway on the store claimed it and ran it again while it
    still ran here.  The leases are renewed until the runs have ended (or been given back)."""
    infra = _Held()
    async with _gateway(settings, store, infra, admin_token, lease=1.0) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={"name": "held"})).json()["id"]
        for _ in range(500):
            if infra.invocations:
                break
            await asyncio.sleep(0.01)
        assert infra.invocations == 1
        stopping = asyncio.create_task(app.state.gateway.dispatcher.stop(grace=30.0))
        await asyncio.sleep(2.5)  # (over twice the lease)
        taken = await asyncio.to_thread(store.claim, time.time(), 1.0, 10, "another-gateway")
        infra.release.set()
        await stopping
        assert taken == [] and not stopping.cancelled()
    record = store.get_invocation(id)
    assert record is not None and (record.status, record.attempts, record.reruns) == ("succeeded", 1, 0), record


async def _running(infra: InMemoryInfrastructure) -> None:
    for _ in range(500):
        if infra.invocations:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the async invocation never ran")


@pytest.mark.parametrize("grace", [0, 60])
async def test_a_stop_gives_the_async_runs_the_configured_stop_grace(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path],
    caplog: pytest.LogCaptureFixture, grace: int,
) -> None:
    """The async runs in progress as the gateway stopped were given a fixed 5 s, whatever
    stop_grace gave its sync requests.  They get stop_grace too: none (0), they go back to
    the queue at once, not counted; a long one, a run that ends meanwhile is stored."""
    caplog.set_level(logging.INFO, "spanfaas.gateway")
    infra = _Held()
    async with _gateway(msgspec.structs.replace(settings, stop_grace=grace), store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={"name": "held"})).json()["id"]
        await _running(infra)
        stopping = asyncio.create_task(app.state.gateway.stop())  # what the lifespan's end does
        while not any("given" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.01)
        infra.release.set()  # (with no grace, the run was cut already)
        await stopping
    [said] = [r.getMessage() for r in caplog.records if "given" in r.getMessage()]
    assert said == f"stopping: 1 async invocation given {grace} s to end", said
    record = store.get_invocation(id)
    assert record is not None
    if grace:
        assert (record.status, record.attempts, record.reruns) == ("succeeded", 1, 0), record
    else:
        assert (record.status, record.attempts) == ("queued", 0), record


async def test_the_stop_grace_counts_from_the_signal_and_nothing_is_claimed_after_it(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """One stop_grace bounds a stop: the sync requests in progress are waited for first
    (uvicorn), and the async runs get what is left of it, counted from the signal
    (``Gateway.begin_stop``, which the server calls); no async invocation is claimed after
    the signal (it would only start to be cut short)."""
    infra = InMemoryInfrastructure()
    async with _gateway(msgspec.structs.replace(settings, stop_grace=30), store, infra, admin_token) as (app, c):
        gw: Gateway = app.state.gateway
        assert gw.grace_left() == 30  # (no signal: an app's lifespan ended in-process)
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        gw.begin_stop()
        assert 0 < gw.grace_left() <= 30
        gw.stop_began = time.monotonic() - 31  # (as if the sync requests had taken it all)
        assert gw.grace_left() == 0
        gw.stop_began = time.monotonic() - 10
        assert 19 <= gw.grace_left() <= 20
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={})).json()["id"]
        await asyncio.sleep(4 * gw.dispatcher.poll)  # (the feed looks this often: it would have claimed it)
        assert infra.invocations == 0
    record = store.get_invocation(id)
    assert record is not None and (record.status, record.attempts) == ("queued", 0), record


@contextlib.contextmanager
def _store_refuses(store: SQLiteStore, trigger: str) -> Any:
    """The store refuses some writes, as a full disk would (a trigger another client of
    the database creates, and drops again on leaving)."""
    db = sqlite3.connect(store.path, isolation_level=None)
    name = trigger.split()[2]
    try:
        db.execute(trigger)
        yield
    finally:
        db.execute(f"DROP TRIGGER IF EXISTS {name}")
        db.close()


REFUSE_OUTCOMES = (
    "CREATE TRIGGER refuse_outcomes BEFORE UPDATE ON invocations "
    "WHEN NEW.status IN ('succeeded', 'failed') BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
)
REFUSE_OUTCOMES_AND_LEASES = REFUSE_OUTCOMES.replace(
    "NEW.status IN ('succeeded', 'failed')",
    "NEW.status IN ('succeeded', 'failed') OR (OLD.status = 'running' AND NEW.status = 'running')",
)


@pytest.mark.parametrize("refused", [REFUSE_OUTCOMES, REFUSE_OUTCOMES_AND_LEASES], ids=["outcomes", "outcomes-and-leases"])
async def test_an_outcome_the_store_cannot_take_yet_is_not_run_again(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path], refused: str
) -> None:
    """The run is over and its outcome waits in the recorder, which retries while the store
    refuses it: nobody extended the record's lease any more, so once it ran out the record
    was claimed and the function run again, its first outcome still unsaved.  (When the
    store refuses the lease extensions too, the lease runs out and the record is claimed:
    the outcome waiting for the store settles it, the function does not run again.)"""
    infra = InMemoryInfrastructure()
    async with _gateway(settings, store, infra, admin_token, lease=0.3) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        with _store_refuses(store, refused):
            id = (await c.post("/v1/functions/hello/invoke?mode=async", json={"name": "once"})).json()["id"]
            for _ in range(500):
                if infra.invocations:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.2)  # four leases; the recorder tries again each second
            assert infra.invocations == 1, "run again while its outcome waited to be stored"
            stored = store.get_invocation(id)
            assert stored is not None and stored.status == "running"
        view = await wait_done(c, id)
    assert view["status"] == "succeeded" and view["result"] == {"hello": "once"}, view
    assert (view["attempts"], view["reruns"], infra.invocations) == (1, 0, 1)


UNDECODABLE = '''
import os
def handler(event, context):
    print("reading", os.fsdecode(b"report-\\xff.csv"))  # a file name that is not UTF-8
    return {"n": event["n"]}
'''


async def test_an_outcome_the_store_refuses_is_answered_and_later_ones_stored(
    client: httpx.AsyncClient, fn_dir: Callable[..., Path], gateway: Any
) -> None:
    """Logs holding a lone surrogate (a file name that is not UTF-8, as ``os.fsdecode`` gives
    it) cannot be encoded by the store: the invocation stayed 'running' for ever, and so did
    every async invocation whose outcome was written after it."""
    r = await client.put("/v1/functions/fs", content=pack_function(fn_dir("fs", UNDECODABLE)))
    assert r.status_code == 201, r.text
    first = (await client.post("/v1/functions/fs/invoke?mode=async", json={"n": 1})).json()["id"]
    view = await wait_done(client, first)
    assert view["status"] == "failed" and view["error"]["kind"] == "infra", view
    assert "could not be stored" in view["error"]["message"]
    await client.put("/v1/functions/hello", content=pack_function(fn_dir()))
    later = (await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "b"})).json()["id"]
    assert (await wait_done(client, later))["status"] == "succeeded"
    metrics = (await client.get("/metrics")).text
    assert 'spanfaas_records_refused_total{function="fs"} 1.0' in metrics


async def test_an_async_invocation_the_store_refuses_is_a_422_that_says_what_to_change(
    client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore
) -> None:
    """RecordRefused on enqueue answered 502 'record-refused', the platform's failure, though
    the cause is a value of the request: sent again as it is, it is refused again."""
    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON invocations WHEN CAST(NEW.payload AS TEXT) LIKE '%poison%' "
            "BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: poison'); END"
        )
        r = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "poison"})
        ok = await client.post("/v1/functions/hello/invoke?mode=async", json={"name": "a"})
    finally:
        db.close()
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
    doc = r.json()
    assert doc["type"].endswith("/value-refused") and doc["status"] == 422, doc
    assert doc["detail"].startswith("the store refused invocation "), doc
    assert "IntegrityError: CHECK constraint failed: poison" in doc["detail"], doc
    assert "not queued" in doc["detail"] and "change" in doc["detail"], doc
    assert ok.status_code == 202 and (await wait_done(client, ok.json()["id"]))["status"] == "succeeded"


async def test_an_invocation_queued_before_its_function_was_removed_fails_as_not_found(
    client: httpx.AsyncClient, hello: dict[str, object], store: SQLiteStore, gateway: Any
) -> None:
    """Queued, then ``rm`` before it ran: it failed as the platform's failure (kind 'infra'),
    counted in spanfaas_invocation_errors_total{kind="infra"}, and ``spanfaas result`` exited 7
    ('the platform failed') with a 502 infra-error problem."""
    assert (await client.delete("/v1/functions/hello")).status_code == 204
    queued = InvocationRecord(id="q-before-rm", function="hello", status="queued", mode="async",
                              content_type="application/json", payload=b"{}", created_at=time.time())  # fmt: skip
    store.enqueue_many([queued])  # as the 202 of an async invoke had left it before the rm
    gateway.dispatcher.wake()
    view = await wait_done(client, "q-before-rm")
    assert view["status"] == "failed" and view["attempts"] == 1, view
    assert view["error"]["type"] == "FunctionNotFound", view
    err = error_from_record(view)
    assert isinstance(err, FunctionNotFound) and err.exit_code == 4 and err.status == 404, err
    metrics = (await client.get("/metrics")).text
    assert 'kind="infra"' not in metrics, metrics
    assert 'spanfaas_invocation_errors_total{function="hello",kind="not_found"} 1.0' in metrics, metrics
    assert 'spanfaas_invocations_total{function="hello",status="failed"} 1.0' in metrics


class _SentThenBusy(InMemoryInfrastructure):
    """A site that took the call (its run started, as far as the gateway can tell: sent), then
    answered 429; the next claim waits in the function's queue (no start)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    async def invoke(self, spec: Any, payload: bytes, ctx: Any) -> Any:
        from spanfaas.errors import TooManyRequests

        self.invocations += 1
        if self.invocations == 1:
            ctx.on_start()
            raise TooManyRequests("the site's queue is full")
        self.waiting.set()
        await asyncio.Event().wait()


async def test_a_start_mark_of_an_earlier_claim_is_not_put_on_the_next(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """The mark of a run that started, still waiting to be written (the next batch, or the store
    down), was written once the invocation had been given back (429) and claimed again by the
    same gateway: that claim, which only waited, read as started -- a crash then counted it a
    re-run (CRASH_RERUNS), not a claim given back."""
    infra = _SentThenBusy()
    real = store.mark_started
    written: list[list[str]] = []

    def mark_started(claims: Any) -> None:
        if not infra.waiting.is_set():  # the store refuses the marks until the next claim waits
            raise sqlite3.OperationalError("database is locked")
        real(claims)
        written.append(dict(claims))

    store.mark_started = mark_started  # type: ignore[method-assign]
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={})).json()["id"]
        deadline = time.monotonic() + 10
        while not written:  # a write of the marks went through after the second claim
            assert time.monotonic() < deadline, "no marks written"
            await asyncio.sleep(0.02)
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            row = db.execute("SELECT status, started, attempts FROM invocations WHERE id = ?", (id,)).fetchone()
        assert infra.invocations == 2 and row == ("running", 0, 1), (row, written)


async def test_a_start_mark_written_as_its_record_is_claimed_again_does_not_land_on_the_new_claim(
    settings: Settings, store: SQLiteStore, admin_token: str, fn_dir: Callable[..., Path]
) -> None:
    """A write of marks already on its way to the store (in its thread) while the record was
    given back (429) and claimed again by the same gateway landed on the new claim, which only
    waited: both claims had the gateway's owner, all the store could check."""
    infra = _SentThenBusy()
    real = store.mark_started
    written: list[Any] = []

    def mark_started(*args: Any) -> None:
        assert infra.waiting.wait(10), "the second claim did not wait"  # on its way, until the record is claimed again
        real(*args)
        written.append(args)

    store.mark_started = mark_started  # type: ignore[method-assign]
    async with _gateway(settings, store, infra, admin_token) as (app, c):
        assert (await c.put("/v1/functions/hello", content=pack_function(fn_dir()))).status_code == 201
        id = (await c.post("/v1/functions/hello/invoke?mode=async", json={})).json()["id"]
        deadline = time.monotonic() + 10
        while not written:
            assert time.monotonic() < deadline, "no marks written"
            await asyncio.sleep(0.02)
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            row = db.execute("SELECT status, started, attempts FROM invocations WHERE id = ?", (id,)).fetchone()
        assert infra.invocations == 2 and row == ("running", 0, 1), (row, written)
