"""Two gateways on one PostgreSQL store (and one data dir, where the bundles are):
a deploy or a remove through one is served by the other within the staleness
bound, the other's old instances are drained or stopped, and what it had
accepted before the change still runs.  Real gateway processes on the real
local runtime, real sockets, a real PostgreSQL.

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


@pytest.fixture(params=["notified", "polling"])
def shared(request: pytest.FixtureRequest, postgres_db: str) -> Iterator[tuple[GatewayProcess, GatewayProcess, Path]]:
    """Gateways ``a`` and ``b`` on one store and one data dir; the functions' source root.
    'polling': b does not listen for PostgreSQL's announcements, and finds changes by
    looking every functions_poll (0.5 s) alone."""
    root = Path(tempfile.mkdtemp(prefix="spanfaas-coherence-"))
    root.chmod(0o755)  # functions run as another uid: the bundles must be reachable
    config = root / "spanfaas.toml"
    listen = "true" if request.param == "notified" else "false"
    # real pids in the answers: no pid namespace
    config.write_text(f'functions_listen = {listen}\n[runtime]\nsandbox = false\ncgroup_root = "spanfaas-test"\n')
    env = {"SPANFAAS_CONFIG": str(config)}
    a = GatewayProcess(root / "data", infra="local", store=postgres_db, env=env)
    b = GatewayProcess(root / "data", infra="local", store=postgres_db, env=env)
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
