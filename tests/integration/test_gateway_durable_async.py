"""Durable async: SIGKILL the gateway while 1,000 async invocations are being
accepted; after a restart every id that got a 202 completes, none is lost.
An outcome is shown only once it is stored, so a kill never changes one a
client has read."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from spanfaas.store import SQLiteStore

N = 1000
KILL_AFTER = 300

HANDLER = """
import asyncio
async def handler(event, context):
    await asyncio.sleep(0.005)
    return {"n": event["n"]}
"""


async def submit_until_killed(gw: GatewayProcess) -> tuple[list[str], int]:
    accepted: list[str] = []
    failed = 0
    sem = asyncio.Semaphore(32)
    killed = asyncio.Event()

    async def one(c: httpx.AsyncClient, i: int) -> None:
        nonlocal failed
        async with sem:
            try:
                r = await c.post("/v1/functions/work/invoke?mode=async", json={"n": i})
            except httpx.TransportError:
                failed += 1
                return
            if r.status_code == 202:
                accepted.append(r.json()["id"])
                if len(accepted) >= KILL_AFTER and not killed.is_set():
                    killed.set()
                    gw.kill()  # mid-stream: other requests are in flight right now
            else:
                failed += 1

    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers, timeout=10, limits=limits) as c:
        await asyncio.gather(*(one(c, i) for i in range(N)))
    return accepted, failed


@pytest.mark.slow
def test_sigkill_loses_no_accepted_invocation(tmp_path: Path) -> None:
    fn = tmp_path / "work"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "work"\nisolation = "reuse"\n')
    gw = GatewayProcess(tmp_path / "data", env={"SPANFAAS_ASYNC_WORKERS": "16"})
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/work", content=pack_function(fn)).status_code == 201
        accepted, failed = asyncio.run(submit_until_killed(gw))
        assert len(accepted) >= KILL_AFTER and failed > 0, (len(accepted), failed)
        assert len(set(accepted)) == len(accepted)

        store = SQLiteStore(tmp_path / "data" / "spanfaas.db")
        try:
            statuses = {r.status for r in store.list_invocations("work", limit=N)}
            assert all(store.get_invocation(i) is not None for i in accepted)  # committed before the 202
        finally:
            store.close()

        gw.start()
        deadline = time.monotonic() + 120
        pending = set(accepted)
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            while pending and time.monotonic() < deadline:
                views = c.get("/v1/invocations", params={"function": "work", "limit": N}).json()["invocations"]
                done = {v["id"] for v in views if v["status"] == "succeeded"}
                pending -= done
                if pending:
                    time.sleep(0.2)
            assert not pending, f"{len(pending)} accepted invocations never completed"
            for id in accepted:
                view = c.get(f"/v1/invocations/{id}").json()
                assert view["status"] == "succeeded" and view["result"]["n"] >= 0
        print(f"accepted {len(accepted)} before SIGKILL (statuses then: {sorted(statuses)}), all completed")
    finally:
        gw.stop()


GATED = """
import asyncio, os
async def handler(event, context):
    open(event["started"], "w").close()
    while not os.path.exists(event["go"]):
        await asyncio.sleep(0.01)
    with open(event["runs"], "a") as f:
        f.write("run\\n")
    with open(event["runs"]) as f:
        return {"runs": f.read().count("run")}
"""


def _marked_started(db: Path, id: str) -> bool:
    """The gateway marked the run of ``id`` started (a crash now leaves a re-run)."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        return c.execute("SELECT started FROM invocations WHERE id = ?", (id,)).fetchone() == (1,)


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_an_async_outcome_is_shown_only_once_it_is_stored(tmp_path: Path) -> None:
    """GET answered an async outcome from the recorder's batch before it was committed (up
    to ~50 ms, or as long as the store could not take it): a gateway killed then ran the
    invocation again, and the outcome a client had already read changed under it."""
    fn = tmp_path / "gated"
    fn.mkdir()
    (fn / "handler.py").write_text(GATED)
    (fn / "spanfaas.toml").write_text('name = "gated"\nisolation = "reuse"\n')
    files = {k: str(tmp_path / k) for k in ("started", "go", "runs")}
    gw = GatewayProcess(tmp_path / "data")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/gated", content=pack_function(fn)).status_code == 201
            id = c.post("/v1/functions/gated/invoke?mode=async", json=files).json()["id"]
            _wait_for(lambda: Path(files["started"]).exists())  # claimed and running,
            _wait_for(lambda: _marked_started(tmp_path / "data" / "spanfaas.db", id))  # and so in the store
            # Another writer holds the store's write lock: the outcome cannot be committed.
            lock = sqlite3.connect(tmp_path / "data" / "spanfaas.db", isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")
                Path(files["go"]).touch()
                _wait_for(lambda: Path(files["runs"]).exists())
                seen = set()
                until = time.monotonic() + 0.5  # ten times the recorder's batch interval
                while time.monotonic() < until:
                    seen.add(c.get(f"/v1/invocations/{id}").json()["status"])
                    time.sleep(0.02)
                assert seen == {"running"}, "an outcome was shown before it was stored"
                gw.kill()  # the outcome was never stored: the next gateway runs it again
            finally:
                lock.rollback()
                lock.close()
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            _wait_for(lambda: c.get(f"/v1/invocations/{id}").json()["status"] == "succeeded")
            view = c.get(f"/v1/invocations/{id}").json()
        assert view["result"] == {"runs": 2} and view["attempts"] == 2  # the only outcome anyone saw
    finally:
        gw.stop()


SLEEPER = """
import time
def handler(event, context):
    time.sleep(event["s"])
    return {"slept": event["s"]}
"""


def test_a_second_ctrl_c_stops_at_once_and_still_stops_cleanly(tmp_path: Path) -> None:
    """A second Ctrl-C (uvicorn's force quit) skipped the gateway's own stop: the log ended
    in 'ERROR: Traceback ... CancelledError' from the lifespan, the async invocation that
    ran was left 'running' (taken back as a re-run by the next start), and a sync call cut
    short was reported as the function's crash ('the instance was lost', exit 8).  Now it
    stops at once all the same: no traceback, the async run back in the queue uncounted,
    and the cut sync call is the platform's failure, not the function's."""
    import signal
    import threading

    src = tmp_path / "sleeper"
    src.mkdir()
    (src / "handler.py").write_text(SLEEPER)
    (src / "spanfaas.toml").write_text('name = "sleeper"\n[resources]\ntimeout = 60\n')
    gw = GatewayProcess(tmp_path / "data", infra="local")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            assert c.put("/v1/functions/sleeper", content=pack_function(src)).status_code == 201
            job = c.post("/v1/functions/sleeper/invoke?mode=async", json={"s": 4}).json()["id"]
            sync: list[httpx.Response | Exception] = []

            def call() -> None:
                try:
                    sync.append(c.post("/v1/functions/sleeper/invoke", json={"s": 30}))
                except httpx.HTTPError as exc:
                    sync.append(exc)

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(1.5)  # both run
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            started = time.monotonic()
            gw.proc.send_signal(signal.SIGINT)  # force quit
            gw.proc.wait(15)
            assert time.monotonic() - started < 8, "a second Ctrl-C stops the gateway at once"
            caller.join(10)
        log = gw.log()
        assert "Traceback" not in log and "CancelledError" not in log, log
        (got,) = sync
        if isinstance(got, httpx.Response):  # answered before the connection closed
            assert got.status_code in (502, 503) and "crash" not in got.text and "instance was lost" not in got.text, got.text
        gw.proc = None
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deadline = time.monotonic() + 30
            while (view := c.get(f"/v1/invocations/{job}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, view
                time.sleep(0.1)
        assert view["status"] == "succeeded" and view["attempts"] == 1 and view["reruns"] == 0, view
    finally:
        gw.stop()


COUNTED = """
import asyncio, os
async def handler(event, context):
    with open(event["starts"], "a") as f:
        f.write("start\\n")
    while not os.path.exists(event["go"]):
        await asyncio.sleep(0.01)
    return {"ok": True}
"""


def test_a_run_whose_lease_lapsed_is_not_started_again_beside_itself(tmp_path: Path) -> None:
    """A gateway whose heartbeat could not extend a claim in time (the store was away for
    longer than async_lease) took its own invocation back at the next claim, while it still
    ran it, and started it a second time beside the first; the second task replaced the
    first in the dispatcher's books and was lost from them when the first ended (its lease
    no longer extended, its run not given back at a stop).  The run in progress goes on,
    alone, and its outcome is the one stored."""
    fn = tmp_path / "counted"
    fn.mkdir()
    (fn / "handler.py").write_text(COUNTED)
    (fn / "spanfaas.toml").write_text('name = "counted"\nisolation = "reuse"\n')
    files = {k: str(tmp_path / k) for k in ("starts", "go")}
    gw = GatewayProcess(tmp_path / "data")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/counted", content=pack_function(fn)).status_code == 201
            id = c.post("/v1/functions/counted/invoke?mode=async", json=files).json()["id"]
            _wait_for(lambda: Path(files["starts"]).exists())  # claimed and running
            db = sqlite3.connect(tmp_path / "data" / "spanfaas.db", isolation_level=None, timeout=10)
            try:
                def taken_back() -> bool:  # its lease lapsed (as if the heartbeat failed), until a claim takes it
                    db.execute("UPDATE invocations SET lease_until = 0 WHERE id = ? AND reruns = 0", (id,))
                    return bool(db.execute("SELECT reruns FROM invocations WHERE id = ?", (id,)).fetchone()[0])

                _wait_for(taken_back)
            finally:
                db.close()
            Path(files["go"]).touch()
            _wait_for(lambda: c.get(f"/v1/invocations/{id}").json()["status"] == "succeeded")
        assert Path(files["starts"]).read_text() == "start\n", "started again beside the run in progress"
        assert gw.stop() == 0
        assert "Traceback" not in gw.log(), gw.log()
    finally:
        gw.stop()


def _stacks(gw: GatewayProcess) -> str:
    """The gateway's threads and tasks now (a fresh SIGUSR1 dump)."""
    assert gw.proc is not None
    mark = "spanfaas.gateway: stacks (SIGUSR1):"
    seen = gw.log().count(mark)
    gw.proc.send_signal(signal.SIGUSR1)
    _wait_for(lambda: gw.log().count(mark) > seen and "--- task" in gw.log().rsplit(mark, 1)[1])
    return gw.log().rsplit(mark, 1)[1]


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_an_enqueue_cut_at_shutdown_says_it_may_be_queued(tmp_path: Path) -> None:
    """A second Ctrl-C cut async requests while their transaction waited for the store: they
    were answered "try again once it is back", yet the transaction committed as the gateway
    stopped, and a retry queued the invocation twice.  Now the answer says it may be queued:
    under which id to look it up, or, with an Idempotency-Key, that a retry with it is safe."""
    fn = tmp_path / "work"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "work"\n')
    gw = GatewayProcess(tmp_path / "data")
    answers: dict[str | None, httpx.Response | Exception] = {}
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            assert c.put("/v1/functions/work", content=pack_function(fn)).status_code == 201
            lock = sqlite3.connect(tmp_path / "data" / "spanfaas.db", isolation_level=None)
            try:
                lock.execute("BEGIN IMMEDIATE")  # the store takes no write: the enqueues wait for it

                def post(key: str | None) -> None:
                    headers = {**gw.headers, **({"idempotency-key": key} if key else {})}
                    try:
                        with httpx.Client(base_url=gw.url, headers=headers, timeout=60) as own:
                            answers[key] = own.post("/v1/functions/work/invoke?mode=async", json={"n": 1})
                    except httpx.HTTPError as exc:
                        answers[key] = exc

                callers = [threading.Thread(target=post, args=(key,)) for key in (None, "order-7")]
                for t in callers:
                    t.start()
                # Both requests in the app, a transaction in the store's hands (waiting for the lock).
                def both_wait() -> bool:
                    now = _stacks(gw)
                    requests = [x for x in now.splitlines() if x.startswith("--- task") and "RequestResponseCycle" in x]
                    return len(requests) == 2 and "in enqueue_many" in now

                _wait_for(both_wait)
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGINT)
                _wait_for(lambda: not _listening(gw.url))  # stopping: it waits for the requests in progress
                gw.proc.send_signal(signal.SIGINT)  # force quit: they are cut
                for t in callers:
                    t.join(15)
            finally:
                lock.rollback()  # the store takes writes again: what was in its hands commits
                lock.close()
        assert gw.proc is not None and gw.proc.wait(30) == 0, gw.log()
        bare, keyed = answers[None], answers["order-7"]
        assert isinstance(bare, httpx.Response) and isinstance(keyed, httpx.Response), answers
        assert bare.status_code == keyed.status_code == 503, (bare.text, keyed.text)
        for r in (bare, keyed):
            assert "may be queued" in r.json()["detail"] and "try again" not in r.json()["detail"], r.text
        id = bare.json()["invocation_id"]
        assert f"may be queued as invocation {id}: look it up (GET /v1/invocations/{id})" in bare.json()["detail"], bare.text
        assert "send it again with the same Idempotency-Key ('order-7')" in keyed.json()["detail"], keyed.text
        store = SQLiteStore(tmp_path / "data" / "spanfaas.db")
        try:
            stored = {r.id: r for r in store.list_invocations("work")}
        finally:
            store.close()
        assert stored, "one of them was in the store's hands, and committed once it answered"
        gw.proc = None
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            again = c.post("/v1/functions/work/invoke?mode=async", json={"n": 1}, headers={"idempotency-key": "order-7"})
            assert again.status_code == 202, again.text
            keyed_ids = [r.id for r in stored.values() if r.idempotency_key == "order-7"]
            assert keyed_ids in ([], [again.json()["id"]])  # queued once, whichever way the cut went
            assert c.get(f"/v1/invocations/{id}").status_code == (200 if id in stored else 404)
    finally:
        gw.stop()
