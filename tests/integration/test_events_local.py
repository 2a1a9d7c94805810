"""An event end to end on the real local runtime: the function, in its own
sandboxed process, sees the translated CloudEvent and ``context.event``."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = """
import os
def handler(event, context):
    return {"data": event["data"], "attrs": context.event, "pid": os.getpid()}
"""


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """Functions run as another uid: their bundle path must be reachable (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="spanfaas-events-local-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_cloudevent_on_the_local_runtime(world_readable_tmp: Path) -> None:
    fn = world_readable_tmp / "src" / "orders"
    fn.mkdir(parents=True)
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "orders"\n[[triggers]]\ntype = "com.example.order.*"\n')
    gw = GatewayProcess(world_readable_tmp / "data", infra="local")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            assert c.put("/v1/functions/orders", content=pack_function(fn)).status_code == 201
            headers = {"ce-specversion": "1.0", "ce-id": "o-1", "ce-source": "/shop/berlin",
                       "ce-type": "com.example.order.created", "ce-subject": "order/1", "content-type": "application/json"}  # fmt: skip
            r = c.post("/v1/events", content=json.dumps({"total": 42}), headers=headers)
            assert r.status_code == 202, r.text
            [inv] = r.json()["events"][0]["invocations"]
            deadline = time.monotonic() + 30
            while (view := c.get(f"/v1/invocations/{inv}").json())["status"] not in ("succeeded", "failed"):
                assert time.monotonic() < deadline, view
                time.sleep(0.05)
        assert view["status"] == "succeeded" and view["infra"] == "local", view
        out = view["result"]
        assert out["data"] == {"total": 42}
        assert out["pid"] != (gw.proc.pid if gw.proc else 0) and out["pid"] != os.getpid()
        attrs = out["attrs"]
        assert (attrs["id"], attrs["source"], attrs["type"], attrs["subject"]) == (
            "o-1", "/shop/berlin", "com.example.order.created", "order/1",
        )  # fmt: skip
        assert attrs["specversion"] == "1.0" and "data" not in attrs
        assert gw.stop() == 0, gw.log()
    finally:
        gw.stop()
