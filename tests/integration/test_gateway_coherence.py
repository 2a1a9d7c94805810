"""Two gateways on one PostgreSQL store, on one data dir or each on its own (the
bundles travel through the store): a deploy or a remove through one is served by
the other within the staleness bound, the other's old instances are drained or
stopped, and what it had accepted before the change still runs, on a bundle
nobody deleted under it.  Real gateway processes on the real local runtime, real
sockets, a real PostgreSQL.

(SQLite cannot be shared: one gateway owns its data dir, test_gateway_one_owner.py.)
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess
from tests.procs import alive

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

HANDLER = """
import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"version": VERSION, "pid": os.getpid(), "template": os.getppid()}
VERSION = %d
"""

BOUND = 0.5
"""The documented bound (functions_poll; README, docs/shared-store.md): another gateway's
deploy or remove is seen within 0.5 s.  Serving a deploy then takes one template start,
as a deploy here does."""
START = 1.5
"""A template start on a loaded 2-vCPU machine."""
SLACK = 1.0
"""The test's own requests on a loaded machine."""


Pair = tuple[GatewayProcess, GatewayProcess, Path]


@pytest.fixture(params=["notified", "polling"])
def shared(request: pytest.FixtureRequest, postgres_db: str) -> Iterator[Pair]:
    """Gateways ``a`` and ``b`` on one store and one data dir; the functions' source root.
    'polling': b does not listen for PostgreSQL's announcements, and finds changes by
    looking every functions_poll (0.5 s) alone."""
    yield from _pair(postgres_db, listen=request.param == "notified", data_b="data")


@pytest.fixture
def together(postgres_db: str) -> Iterator[Pair]:
    """Gateways ``a`` and ``b`` on one store and one data dir."""
    yield from _pair(postgres_db, listen=True, data_b="data")


@pytest.fixture
def apart(postgres_db: str) -> Iterator[Pair]:
    """Gateways ``a`` and ``b`` on one store, each with a data dir of its own."""
    yield from _pair(postgres_db, listen=True, data_b="data-b")


def _pair(postgres_db: str, *, listen: bool, data_b: str) -> Iterator[Pair]:
    root = Path(tempfile.mkdtemp(prefix="spanfaas-coherence-"))
    root.chmod(0o755)  # functions run as another uid: the bundles must be reachable
    config = root / "spanfaas.toml"
    # real pids in the answers: no pid namespace
    config.write_text(f'functions_listen = {str(listen).lower()}\n[runtime]\nsandbox = false\ncgroup_root = "spanfaas-test"\n')
    env = {"SPANFAAS_CONFIG": str(config)}
    a = GatewayProcess(root / "data", infra="local", store=postgres_db, env=env)
    b = GatewayProcess(root / data_b, infra="local", store=postgres_db, env=env)
    b.starts = 10  # its own log files
    try:
        a.start()
        b.start()
        b.admin_token = a.admin_token  # one store: one admin token
        yield a, b, root
    finally:
        for gw in (a, b):
            assert gw.stop() == 0 or gw.proc is None, gw.log()
        shutil.rmtree(root, ignore_errors=True)


def bundle(root: Path, version: int, name: str = "shared") -> bytes:
    d = root / "src" / f"{name}-v{version}"
    d.mkdir(parents=True)
    (d / "handler.py").write_text(HANDLER % version)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n')
    return pack_function(d)


def until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``cond()`` held; fails after ``timeout``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - t0


def test_a_deploy_through_one_gateway_is_served_by_the_other(shared: tuple[GatewayProcess, GatewayProcess, Path]) -> None:
    a, b, root = shared
    with httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as ca, httpx.Client(base_url=b.url, headers=a.headers, timeout=30) as cb:
        assert ca.put("/v1/functions/shared", content=bundle(root, 1)).status_code == 201
        old = cb.post("/v1/functions/shared/invoke", json={}).json()
        assert old["version"] == 1  # b deployed it on first use
        # An invocation b accepted before the change: it must still run (on the version it found).
        slow: dict[str, httpx.Response] = {}
        call = threading.Thread(target=lambda: slow.setdefault("r", cb.post("/v1/functions/shared/invoke", json={"sleep": 1.0})))
        call.start()
        time.sleep(0.2)

        r = ca.put("/v1/functions/shared", content=bundle(root, 2))
        assert r.status_code == 201 and r.json()["version"] == 2
        seen = until(lambda: cb.post("/v1/functions/shared/invoke", json={}).json()["version"] == 2, BOUND + START + SLACK, "b serves version 2")
        print(f"b served version 2 {seen * 1000:.0f} ms after a's deploy returned")

        call.join(30)
        assert slow["r"].status_code == 200 and slow["r"].json()["version"] == 1, slow["r"].text
        # b's warm instance of version 1, and its template, are drained once the call is done.
        until(lambda: not alive(old["pid"]) and not alive(old["template"]), 10, "b's version-1 instance drained")
        new = cb.post("/v1/functions/shared/invoke", json={}).json()
        assert new["version"] == 2 and alive(new["pid"])
        assert ca.post("/v1/functions/shared/invoke", json={}).json()["version"] == 2
        assert cb.get("/v1/functions/shared").json()["version"] == 2


def test_a_remove_through_one_gateway_stops_the_other(shared: tuple[GatewayProcess, GatewayProcess, Path]) -> None:
    a, b, root = shared
    with httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as ca, httpx.Client(base_url=b.url, headers=a.headers, timeout=30) as cb:
        assert ca.put("/v1/functions/shared", content=bundle(root, 1)).status_code == 201
        old = cb.post("/v1/functions/shared/invoke", json={}).json()
        slow: dict[str, httpx.Response] = {}
        call = threading.Thread(target=lambda: slow.setdefault("r", cb.post("/v1/functions/shared/invoke", json={"sleep": 1.0})))
        call.start()
        time.sleep(0.2)

        assert ca.delete("/v1/functions/shared").status_code == 204
        seen = until(lambda: cb.post("/v1/functions/shared/invoke", json={}).status_code == 404, BOUND + SLACK, "b answers 404")
        print(f"b answered 404 {seen * 1000:.0f} ms after a's remove returned")
        r = cb.post("/v1/functions/shared/invoke", json={})
        assert r.json()["detail"] == "function 'shared' not found; deployed: none"

        call.join(30)
        assert slow["r"].status_code == 200 and slow["r"].json()["version"] == 1, slow["r"].text
        until(lambda: not alive(old["pid"]) and not alive(old["template"]), 10, "b's instance stopped")
        assert cb.get("/v1/functions/shared").status_code == 404

        # Deployed again (versions start over at 1): b serves the new code, not its old version 1.
        assert ca.put("/v1/functions/shared", content=bundle(root, 3)).json()["version"] == 1
        until(lambda: cb.post("/v1/functions/shared/invoke", json={}).json().get("version") == 3, BOUND + START + SLACK, "b serves the new code")


READER = """
import os, time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    with open(os.path.join(os.path.dirname(__file__), "data.txt")) as f:  # read from its bundle, late
        return {"data": f.read(), "pid": os.getpid(), "template": os.getppid()}
"""


def reader_bundle(root: Path, text: str) -> bytes:
    d = root / "src" / f"reader-{text}"
    d.mkdir(parents=True)
    (d / "handler.py").write_text(READER)
    (d / "data.txt").write_text(text)
    (d / "spanfaas.toml").write_text('name = "reader"\nisolation = "reuse"\n')
    return pack_function(d)


def unpacked(data_dir: Path) -> list[str]:
    d = data_dir / "bundles"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_a_gateway_with_its_own_data_dir_serves_what_another_deployed(apart: Pair) -> None:
    a, b, root = apart
    with httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as ca, httpx.Client(base_url=b.url, headers=a.headers, timeout=30) as cb:
        assert ca.put("/v1/functions/shared", content=bundle(root, 1)).status_code == 201
        r = cb.post("/v1/functions/shared/invoke", json={})
        assert r.status_code == 200 and r.json()["version"] == 1, r.text
        assert len(unpacked(root / "data-b")) == 1  # fetched from the store into b's own data dir

        assert ca.put("/v1/functions/shared", content=bundle(root, 2)).json()["version"] == 2
        until(lambda: cb.post("/v1/functions/shared/invoke", json={}).json().get("version") == 2, BOUND + START + SLACK, "b serves version 2")
        # An identical redeploy through b, before or after it saw version 2: no new version.
        r = cb.put("/v1/functions/shared", content=bundle(root / "again", 2))
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["changed"] is False


@pytest.mark.parametrize("layout", ["apart", "together"])
def test_a_remove_through_one_gateway_leaves_the_bundle_the_other_still_runs(layout: str, request: pytest.FixtureRequest) -> None:
    """b runs a call that reads a file of its bundle late, while a removes the function:
    the call reads it (nobody deleted the bundle under it, neither a, on one data dir,
    nor b), then the bundle goes from the store and from every data dir."""
    a, b, root = request.getfixturevalue(layout)
    with httpx.Client(base_url=a.url, headers=a.headers, timeout=30) as ca, httpx.Client(base_url=b.url, headers=a.headers, timeout=30) as cb:
        r = ca.put("/v1/functions/reader", content=reader_bundle(root, "one"))
        assert r.status_code == 201
        digest = r.json()["digest"]
        first = cb.post("/v1/functions/reader/invoke", json={}).json()
        assert first["data"] == "one"
        slow: dict[str, httpx.Response] = {}
        call = threading.Thread(target=lambda: slow.setdefault("r", cb.post("/v1/functions/reader/invoke", json={"sleep": 1.5})))
        call.start()
        time.sleep(0.3)

        assert ca.delete("/v1/functions/reader").status_code == 204
        until(lambda: cb.post("/v1/functions/reader/invoke", json={}).status_code == 404, BOUND + SLACK, "b answers 404")
        call.join(30)
        assert slow["r"].status_code == 200 and slow["r"].json()["data"] == "one", slow["r"].text

        until(lambda: not alive(first["pid"]) and not alive(first["template"]), 10, "b's instance stopped")
        for data_dir in {root / "data", b.data_dir}:
            # the unpacked copy goes first, then the archive: wait for both
            blob = data_dir / "blobs" / "sha256" / digest[:2] / digest
            until(lambda: digest not in unpacked(data_dir) and not blob.exists(), 5, f"the bundle deleted from {data_dir.name}")
        assert _stored_blobs(a.store) == []


def _stored_blobs(url: str | None) -> list[str]:
    import psycopg

    assert url is not None
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT digest FROM blobs").fetchall()]
