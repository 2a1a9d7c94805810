"""One gateway owns an SQLite data dir: a second one started on it (a second
`spanfaas up`, or a restart that overlaps the old process) must not take back
the async invocations the first one is running — they would run twice."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

HANDLER = """
import os, time
def handler(event, context):
    with open(event["runs"], "a") as f:
        f.write(context.invocation_id + "\\n")
    deadline = time.monotonic() + 20
    while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return {"ok": True}
"""


def _wait(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_gateway_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    fn = tmp_path / "gated"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    (fn / "spanfaas.toml").write_text('name = "gated"\nisolation = "reuse"\n')
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    first = GatewayProcess(tmp_path / "data")
    second = GatewayProcess(tmp_path / "data")
    second.starts = 10  # its own log files
    try:
        first.start()
        with httpx.Client(base_url=first.url, headers=first.headers, timeout=30) as c:
            assert c.put("/v1/functions/gated", content=pack_function(fn)).status_code == 201
            r = c.post("/v1/functions/gated/invoke?mode=async", json={"runs": str(runs), "gate": str(gate)})
            assert r.status_code == 202
            id = r.json()["id"]
            _wait(runs.exists)  # the first gateway runs it now

            with pytest.raises(RuntimeError, match="another gateway .* data dir"):
                second.start()
            assert second.proc is None or second.proc.poll() is not None
            time.sleep(0.5)  # a requeued record would be claimed again within the dispatcher's poll (0.25 s)

            gate.touch()
            _wait(lambda: c.get(f"/v1/invocations/{id}").json()["status"] == "succeeded")
        assert runs.read_text().split() == [id], "the accepted invocation ran more than once"
    finally:
        second.kill()
        first.stop()
