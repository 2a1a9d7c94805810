"""The store misbehaves under a real gateway process: a value PostgreSQL will
not take, and connections PostgreSQL dropped (a restart).  Outcomes are still
stored, and callers see the store's state, not an internal error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = """
def handler(event, context):
    if event.get("nul"):
        print("binary junk: \\x00\\x01")
    return event
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_db"))


def deploy(tmp_path: Path, c: httpx.Client) -> None:
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "fn"\nisolation = "reuse"\n')
    assert c.put("/v1/functions/fn", content=pack_function(fn)).status_code == 201


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_nul_in_a_functions_logs_does_not_keep_outcomes_from_the_store(tmp_path: Path, store_url: str | None) -> None:
    """PostgreSQL's text cannot hold U+0000: a function that printed one made every batch of
    records its outcome was in fail, for ever -- that outcome and every other one written with
    it stayed 'running', and so did every later one (they join the failed batch)."""
    gw = GatewayProcess(tmp_path / "data", store=store_url)
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deploy(tmp_path, c)
            ids = [c.post("/v1/functions/fn/invoke?mode=async", json=e).json()["id"] for e in ({"n": 1}, {"nul": 1}, {"n": 2})]
            sync = c.post("/v1/functions/fn/invoke", json={"nul": 2}).headers["x-spanfaas-invocation-id"]

            def stored() -> bool:
                return all(c.get(f"/v1/invocations/{id}").json()["status"] == "succeeded" for id in ids)

            wait_for(stored, "the async outcomes to be stored")
            later = c.post("/v1/functions/fn/invoke?mode=async", json={"n": 3}).json()["id"]
            wait_for(lambda: c.get(f"/v1/invocations/{later}").json()["status"] == "succeeded", "a later outcome")
            for id in (ids[1], sync):
                logs = c.get(f"/v1/invocations/{id}").json()["logs"]
                assert logs.startswith("binary junk: ") and "\x01" in logs, logs  # kept, the NUL shown as U+FFFD
        assert gw.stop() == 0
        gw.start()  # what the API shows was stored
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            for id in (*ids, sync):
                assert c.get(f"/v1/invocations/{id}").json()["status"] == "succeeded"
            assert c.get(f"/v1/invocations/{sync}").json()["logs"] == "binary junk: \ufffd\x01\n"
        assert "could not record" not in gw.log()
    finally:
        gw.stop()


def _drop_connections(url: str) -> int:
    """What a PostgreSQL restart does to a client's idle connections: the server ends them."""
    db = url.rsplit("/", 1)[1]
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db,)
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_after_postgresql_dropped_its_connections_requests_are_served(tmp_path: Path, postgres_db: str) -> None:
    """A PostgreSQL restart ends every connection the gateway keeps in its pool; the next
    requests took those dead connections and failed with 500 'the gateway failed
    unexpectedly' (AdminShutdown) although the store was up again -- one per pooled connection."""
    gw = GatewayProcess(tmp_path / "data", store=postgres_db)

    async def burst(n: int) -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            replies = await asyncio.gather(
                *(c.post("/v1/functions/fn/invoke?mode=async", json={"n": i}) for i in range(n)),
                *(c.get("/v1/invocations", params={"function": "fn"}) for _ in range(n)),
                *(c.get("/v1/functions/fn") for _ in range(n)),
            )
        return [(r.status_code, r.text[:200]) for r in replies if r.status_code >= 300]

    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deploy(tmp_path, c)
        for _ in range(3):
            assert asyncio.run(burst(8)) == []  # the pool holds connections now
            assert _drop_connections(postgres_db) > 0
            assert asyncio.run(burst(8)) == []
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            def done() -> bool:
                views = c.get("/v1/invocations", params={"function": "fn", "limit": 100}).json()["invocations"]
                return len(views) == 48 and all(v["status"] == "succeeded" for v in views)

            wait_for(done, "every accepted invocation to succeed")
    finally:
        gw.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_outcomes_of_more_than_a_gib_together_are_stored(postgres_db: str) -> None:
    """The recorder writes the outcomes that gathered in one transaction, 100 rows per
    statement: 16 async outcomes of a 32 MiB payload and a 32 MiB result (or what gathered
    while the store was down) made a statement over PostgreSQL's 1 GiB message limit -- the
    server ended the connection, the batch was written again, and failed for ever."""
    from spanfaas.model import InvocationRecord
    from spanfaas.store.postgres import PostgresStore

    big = b"x" * (32 * 2**20)  # compresses: the server keeps little of it
    with psycopg.connect(postgres_db, autocommit=True) as conn:  # and quickly (pglz takes seconds per GiB)
        conn.execute(f"ALTER DATABASE {postgres_db.rsplit('/', 1)[1]} SET default_toast_compression = 'lz4'")
    records = [
        InvocationRecord(id=f"inv-{i}", function="fn", status="succeeded", mode="async", payload=big, output=big,
                         created_at=time.time())  # fmt: skip
        for i in range(16)
    ]
    store = PostgresStore(postgres_db)
    try:
        store.save_invocations(records)
        stored = store.get_invocation("inv-15")
        assert stored is not None and stored.status == "succeeded" and stored.output == big
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_an_outcome_over_a_gib_is_refused_not_sent_again_for_ever(postgres_db: str, caplog: pytest.LogCaptureFixture) -> None:
    """One outcome over PostgreSQL's 1 GiB message limit (a payload and a result of 560 MiB,
    with max_payload and runtime.max_payload raised): the server ended the connection each
    time it was sent, which reads as a server restart (StoreUnavailable), so the recorder
    sent it again for ever, 6 s each.  It is refused before it is sent, saying why and what
    to change, and stored as a failed outcome with what it was called with."""
    from spanfaas.gateway.recorder import Recorder
    from spanfaas.model import InvocationRecord
    from spanfaas.store import RecordRefused
    from spanfaas.store.postgres import PostgresStore

    big = b"x" * (560 * 2**20)
    with psycopg.connect(postgres_db, autocommit=True) as conn:  # as above: lz4 keeps the payload stored quickly
        conn.execute(f"ALTER DATABASE {postgres_db.rsplit('/', 1)[1]} SET default_toast_compression = 'lz4'")
    huge = InvocationRecord(id="inv-huge", function="fn", status="succeeded", mode="async", payload=big, output=big,
                            created_at=time.time())  # fmt: skip
    small = InvocationRecord(id="inv-small", function="fn", status="succeeded", mode="async", created_at=time.time())
    store = PostgresStore(postgres_db)
    try:
        t0 = time.monotonic()
        with pytest.raises(RecordRefused, match=r"the store refused invocation inv-huge: its values are 1\.1 GiB; "
                                                r"PostgreSQL takes at most 1\.0 GiB in one statement"):  # fmt: skip
            store.save_invocations([small, huge])
        assert time.monotonic() - t0 < 5  # refused here, not sent

        async def record() -> None:
            rec = Recorder(store, interval=0.01)
            rec.start()
            try:
                rec.add(small)
                rec.add(huge)
                await asyncio.wait_for(rec.flush(), 120)
            finally:
                await rec.close()

        asyncio.run(record())
        assert (stored := store.get_invocation("inv-small")) is not None and stored.status == "succeeded"
        with psycopg.connect(postgres_db) as conn:  # (not its payload: more than psycopg reads as text)
            row = conn.execute("SELECT status, error, octet_length(payload), octet_length(output) FROM invocations "
                               "WHERE id = 'inv-huge'").fetchone()  # fmt: skip
        assert row is not None and row[0] == "failed" and "max_payload" in row[1], row
        assert row[2:] == (len(big), 0)  # what it was called with is kept; its result is not
        assert any("inv-huge" in r.getMessage() and "1.1 GiB" in r.getMessage() for r in caplog.records)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_a_payload_over_512_mib_is_read_back_and_claimed(postgres_db: str) -> None:
    """An accepted async invocation whose payload is over 512 MiB (max_payload raised) could
    not be read back: PostgreSQL sends a bytea as text in hex, twice its size, and cannot
    build a value over 1 GiB ('invalid memory alloc request size 1258291203').  The
    dispatcher's claim, which takes it with the next records of the queue, failed each time:
    no async invocation ran any more.  Rows with payloads are read in binary."""
    from spanfaas.model import InvocationRecord
    from spanfaas.store.postgres import PostgresStore

    big = b"x" * (600 * 2**20)
    with psycopg.connect(postgres_db, autocommit=True) as conn:  # as above: lz4 keeps the payload stored quickly
        conn.execute(f"ALTER DATABASE {postgres_db.rsplit('/', 1)[1]} SET default_toast_compression = 'lz4'")
    store = PostgresStore(postgres_db)
    try:
        for id, payload, at in (("inv-big", big, 1.0), ("inv-next", b"{}", 2.0)):
            store.enqueue(InvocationRecord(id=id, function="fn", status="queued", mode="async", payload=payload, created_at=at))
        claimed = store.claim(time.time(), 30, 10, "gw-test")
        assert [r.id for r in claimed] == ["inv-big", "inv-next"] and claimed[0].payload == big
        stored = store.get_invocation("inv-big")
        assert stored is not None and stored.status == "running" and stored.payload == big
    finally:
        store.close()


TWO_GATES = """
import os, time
def handler(event, context):
    me = os.environ["GW"]
    open(event["dir"] + "/started-" + me, "w").close()
    while not os.path.exists(event["dir"] + "/go-" + me):
        time.sleep(0.01)
    with open(event["dir"] + "/runs", "a") as f:
        f.write(me + "\\n")
    return {"ran_on": me}
"""


@pytest.mark.postgres
def test_an_outcome_a_client_read_is_not_replaced_by_another_gateways_rerun(tmp_path: Path, postgres_db: str) -> None:
    """A gateway that stops extending its claim (paused here; in life: it lost the store for
    longer than a lease) has its invocation run again by another gateway sharing the store.
    The first outcome stored is the one clients read; the other run's, stored later,
    replaced it -- the status and result a client had read changed under it."""
    fn = tmp_path / "fn"
    fn.mkdir()
    (fn / "handler.py").write_text(TWO_GATES)
    (fn / "spanfaas.toml").write_text('name = "fn"\nisolation = "reuse"\n')
    gates = tmp_path / "gates"
    gates.mkdir()
    env = {"SPANFAAS_ASYNC_LEASE": "1"}
    a = GatewayProcess(tmp_path / "data", store=postgres_db, env={**env, "GW": "a"})
    b = GatewayProcess(tmp_path / "data", store=postgres_db, env={**env, "GW": "b"})
    paused = False
    try:
        a.start()
        with httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as c:
            assert c.put("/v1/functions/fn", content=pack_function(fn)).status_code == 201
            id = c.post("/v1/functions/fn/invoke?mode=async", json={"dir": str(gates)}).json()["id"]
        wait_for(lambda: (gates / "started-a").exists(), "gateway a to run it")
        b.admin_token = a.admin_token
        b.start()
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)  # a stops extending its claim
        paused = True
        wait_for(lambda: (gates / "started-b").exists(), "gateway b to run it again once a's claim ran out")
        os.kill(a.proc.pid, signal.SIGCONT)
        paused = False
        (gates / "go-a").touch()
        with httpx.Client(base_url=b.url, headers=b.headers, timeout=30) as c:
            def view() -> dict[str, object]:
                v: dict[str, object] = c.get(f"/v1/invocations/{id}").json()
                return v

            wait_for(lambda: view()["status"] == "succeeded", "a's outcome")
            read = view()
            assert read["result"] == {"ran_on": "a"}
            (gates / "go-b").touch()
            wait_for(lambda: (gates / "runs").read_text().split() == ["a", "b"], "b's run to end")
            time.sleep(0.5)  # ten recorder intervals: b's outcome has been written, if it is written
            assert view()["status"] == read["status"] and view()["result"] == read["result"], "an outcome a client read changed"
    finally:
        if paused and a.proc is not None:
            os.kill(a.proc.pid, signal.SIGCONT)
        a.stop()
        b.stop()


@contextlib.contextmanager
def refusing_function_records(data_dir: Path, store_url: str | None) -> Iterator[None]:
    """The store's functions table refuses every new row (a trigger that raises), until the block ends."""
    if store_url is None:
        with contextlib.closing(sqlite3.connect(data_dir / "spanfaas.db", isolation_level=None)) as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON functions BEGIN SELECT RAISE(ABORT, 'refused by a test'); END")
            try:
                yield
            finally:
                conn.execute("DROP TRIGGER refuse")
        return
    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused by a test'; END $$ LANGUAGE plpgsql")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON functions FOR EACH ROW EXECUTE FUNCTION refuse()")
        try:
            yield
        finally:
            conn.execute("DROP TRIGGER refuse ON functions")
            conn.execute("DROP FUNCTION refuse()")


def test_a_deploy_the_store_fails_to_record_is_taken_back(tmp_path: Path, store_url: str | None) -> None:
    """A deploy puts the new version on the infrastructure, then records it: when the store
    failed then (here a trigger in the database raises: an error that is no outage, no lock,
    no full disk), the client got an internal error and the new version, which no record
    has, served every call (and vanished at the next restart).  The version before is put
    back (on a first deploy: none is left), and the problem says what failed."""
    gw = GatewayProcess(tmp_path / "data", store=store_url)
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deploy(tmp_path, c)
            new = tmp_path / "new"
            new.mkdir()
            (new / "handler.py").write_text("def handler(event, context):\n    return {'new': event}\n")
            (new / "spanfaas.toml").write_text('name = "fn"\nisolation = "reuse"\n')
            other = tmp_path / "other"
            other.mkdir()
            (other / "handler.py").write_text(HANDLER)
            (other / "spanfaas.toml").write_text('name = "other"\nisolation = "reuse"\n')
            with refusing_function_records(tmp_path / "data", store_url):
                r = c.put("/v1/functions/fn", content=pack_function(new))
                assert c.post("/v1/functions/fn/invoke", json={"n": 1}).json() == {"n": 1}  # the version before
                assert r.status_code == 500 and r.headers["content-type"] == "application/problem+json", r.text
                doc = r.json()
                assert doc["type"].endswith("/deploy-not-recorded"), doc
                assert doc["detail"].startswith("function 'fn' was not deployed: the store could not record its new version"), doc
                assert "version 1 serves as before" in doc["detail"] and "reference" in doc["detail"], doc
                first = c.put("/v1/functions/other", content=pack_function(other))
                assert first.status_code == 500 and "no version of it serves, as before" in first.json()["detail"], first.text
                assert c.post("/v1/functions/other/invoke", json={}).status_code == 404
            assert c.get("/v1/functions/fn").json()["version"] == 1
            assert c.put("/v1/functions/fn", content=pack_function(new)).status_code == 201
            assert c.post("/v1/functions/fn/invoke", json=2).json() == {"new": 2}
        assert "refused by a test" in gw.log()  # the operator has the store's own words
    finally:
        gw.stop()
