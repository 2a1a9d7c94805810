"""What a gateway on a shared (PostgreSQL) store shows of a sync call that another gateway
runs, as docs/shared-store.md says ("A sync call running on another gateway"): nothing
while it runs (404, saying why), its whole record once it has finished.  Two real gateway
processes on one real PostgreSQL (the in-memory infrastructure runs the function).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from spanfaas import Client
from spanfaas.errors import RUNNING_ELSEWHERE, NotFound
from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

pytestmark = [pytest.mark.postgres]

GATED = """import asyncio, os

async def handler(event, context):
    print("started")
    while not os.path.exists(event["gate"]):
        await asyncio.sleep(0.01)
    print("done")
    return "opened"
"""


def test_a_running_sync_call_is_shown_by_its_own_gateway_only_then_by_every_one(tmp_path: Path, postgres_db: str) -> None:
    fn = tmp_path / "gated"
    fn.mkdir()
    (fn / "main.py").write_text(GATED)
    (fn / "spanfaas.toml").write_text('name = "gated"\nhandler = "main:handler"\n')
    gate = tmp_path / "gate"
    a = GatewayProcess(tmp_path / "a", infra="memory", store=postgres_db)
    b = GatewayProcess(tmp_path / "b", infra="memory", store=postgres_db)
    b.starts = 10  # its own log files
    answers: list[httpx.Response] = []
    try:
        a.start()
        b.start()
        headers = a.headers  # the first start made the admin token: the store's, for both
        with httpx.Client(base_url=a.url, headers=headers, timeout=30) as ca, httpx.Client(base_url=b.url, headers=headers, timeout=30) as cb:
            assert ca.put("/v1/functions/gated", content=pack_function(fn)).status_code == 201
            caller = threading.Thread(target=lambda: answers.append(ca.post("/v1/functions/gated/invoke", json={"gate": str(gate)})))
            caller.start()
            try:
                running: list[dict[str, object]] = []
                deadline = time.monotonic() + 10
                while not running and time.monotonic() < deadline:
                    running = ca.get("/v1/invocations", params={"function": "gated", "status": "running"}).json()["invocations"]
                assert running, a.log()
                id = str(running[0]["id"])
                assert ca.get(f"/v1/invocations/{id}").json()["status"] == "running"  # on the gateway that runs it
                r = cb.get(f"/v1/invocations/{id}")  # on the other: not yet
                assert r.status_code == 404, r.text
                assert RUNNING_ELSEWHERE in r.json()["detail"], r.text
                assert cb.get("/v1/invocations", params={"function": "gated", "status": "running"}).json()["invocations"] == []
                with Client(b.url, headers["authorization"].removeprefix("Bearer ")) as sdk, pytest.raises(NotFound) as info:
                    sdk.logs(id)  # spanfaas logs ID
                assert RUNNING_ELSEWHERE in info.value.message, info.value.message
            finally:
                gate.touch()
                caller.join(30)
            [answer] = answers
            assert answer.status_code == 200 and answer.json() == "opened"
            deadline = time.monotonic() + 10
            while (r := cb.get(f"/v1/invocations/{id}")).status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.02)  # written in the next batch of records (every 50 ms at most)
            view = r.json()
            assert view["status"] == "succeeded" and view["logs"] == "started\ndone\n", view
    finally:
        gate.touch()
        for gw in (a, b):
            gw.kill()
