"""The gateway on the real local runtime: deploy, invoke (sync and async), fail, stop cleanly."""

from __future__ import annotations

import os
import shutil
import signal
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
    print("running", context.invocation_id)
    if event.get("fail"):
        raise KeyError("missing thing")
    if event.get("crash"):
        context.logger.warning("about to crash")
        os._exit(3)
    return {"hello": event.get("name", "world"), "pid": os.getpid()}
"""


@pytest.fixture
def world_readable_tmp() -> Iterator[Path]:
    """Functions run as another uid: their bundle path must be reachable (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="spanfaas-gw-local-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def function_dir(root: Path, name: str, isolation: str) -> Path:
    d = root / "src" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "handler.py").write_text(HANDLER)
    (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "{isolation}"\n')
    return d


def wait_done(c: httpx.Client, id: str, timeout: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, object] = c.get(f"/v1/invocations/{id}").json()
        if view["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return view
        time.sleep(0.05)


def test_deploy_and_invoke_on_the_local_runtime(world_readable_tmp: Path) -> None:
    gw = GatewayProcess(world_readable_tmp / "data", infra="local")
    try:
        gw.start()
        pgid = gw.proc.pid if gw.proc else 0
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            info = c.get("/v1/info").json()
            assert [i["kind"] for i in info["infrastructures"]] == ["local"]
            assert isinstance(info["protections"], list)
            for name, isolation in (("hello", "reuse"), ("strict-hello", "strict")):
                r = c.put(f"/v1/functions/{name}", content=pack_function(function_dir(world_readable_tmp, name, isolation)))
                assert r.status_code == 201, r.text

            r = c.post("/v1/functions/hello/invoke", json={"name": "local"})
            assert r.status_code == 200, r.text
            assert r.json()["hello"] == "local" and r.json()["pid"] != gw.proc.pid  # type: ignore[union-attr]
            assert r.headers["x-spanfaas-infra"] == "local"
            first_pid = r.json()["pid"]
            assert c.post("/v1/functions/hello/invoke", json={}).json()["pid"] == first_pid  # reuse: same instance

            # The same bundle and manifest again: no new version, the warm instance is kept.
            r = c.put("/v1/functions/hello", content=pack_function(function_dir(world_readable_tmp, "hello", "reuse")))
            assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["changed"] is False, r.text
            r = c.post("/v1/functions/hello/invoke", json={})
            assert r.json()["pid"] == first_pid and r.headers["x-spanfaas-cold"] == "false"

            pids = {c.post("/v1/functions/strict-hello/invoke", json={}).json()["pid"] for _ in range(3)}
            assert len(pids) == 3  # strict: a fresh instance per invocation

            r = c.post("/v1/functions/hello/invoke", json={"fail": True})
            assert r.status_code == 500
            doc = r.json()
            assert doc["error_type"] == "KeyError" and "missing thing" in doc["traceback"]
            assert "running" in doc["logs"]

            # A crash keeps what the call printed before it, in the answer and in the record.
            r = c.post("/v1/functions/strict-hello/invoke", json={"crash": True})
            assert r.status_code == 500 and r.json()["exit_status"] == 3, r.text
            assert "running" in r.json()["logs"] and "about to crash" in r.json()["logs"], r.text
            r = c.post("/v1/functions/hello/invoke?mode=async", json={"crash": True})
            view = wait_done(c, r.json()["id"])
            assert view["status"] == "failed" and "about to crash" in str(view["logs"]), view

            r = c.post("/v1/functions/hello/invoke", content=b"not json", headers={"content-type": "application/json"})
            assert r.status_code == 400

            r = c.post("/v1/functions/hello/invoke?mode=async", json={"name": "later"})
            assert r.status_code == 202
            view = wait_done(c, r.json()["id"])
            assert view["status"] == "succeeded" and view["infra"] == "local"
            assert view["result"]["hello"] == "later"  # type: ignore[index]

            metrics = c.get("/metrics").text
            assert 'spanfaas_invocations_total{function="hello",status="succeeded"}' in metrics
            assert c.delete("/v1/functions/strict-hello").status_code == 204
        assert gw.stop() == 0, gw.log()
        with pytest.raises(ProcessLookupError):  # nothing of the gateway's process group is left
            for _ in range(50):
                os.killpg(pgid, 0)
                time.sleep(0.1)
            os.killpg(pgid, signal.SIGKILL)
            raise AssertionError("processes of the gateway were left running")
    finally:
        gw.stop()


def test_a_template_restart_the_host_refuses_is_a_problem_that_says_what_to_fix(world_readable_tmp: Path) -> None:
    """Scaled to zero, a function's template starts again at the next call.  When the host
    refuses that start (here: a file stands where the function's scratch dir is made), the
    call gets a problem that names the platform's failure and what to fix, not a bare 500
    "the gateway failed unexpectedly"; the next call, the host fixed, runs."""
    gw = GatewayProcess(world_readable_tmp / "data", infra="local")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
            d = function_dir(world_readable_tmp, "respawn", "reuse")
            (d / "spanfaas.toml").write_text('name = "respawn"\nisolation = "reuse"\n[scaling]\nidle_ttl = 0.5\n')
            r = c.put("/v1/functions/respawn", content=pack_function(d))
            assert r.status_code == 201, r.text
            r = c.post("/v1/functions/respawn/invoke", json={})
            assert r.status_code == 200, r.text
            zero = 'spanfaas_scale_events_total{direction="zero",function="respawn",infra="local"} 1.0'
            deadline = time.monotonic() + 30
            while zero not in c.get("/metrics").text:  # scaled to zero: its template stopped
                assert time.monotonic() < deadline, "the idle function did not scale to zero"
                time.sleep(0.1)
            (scratch,) = (world_readable_tmp / "data" / "scratch").glob("*/respawn-*")
            shutil.rmtree(scratch)
            scratch.write_text("")
            try:
                r = c.post("/v1/functions/respawn/invoke", json={})
            finally:
                scratch.unlink()
            assert r.status_code == 503, r.text  # InfraUnavailable: the platform cannot run it now
            assert r.headers["content-type"].startswith("application/problem+json"), r.headers
            problem = r.json()
            assert "unexpectedly" not in problem["detail"], problem
            assert "scratch" in problem["detail"] and str(scratch) in problem["detail"], problem
            r = c.post("/v1/functions/respawn/invoke", json={})
            assert r.status_code == 200, r.text
    finally:
        gw.stop()


def test_sdk_map_waits_for_room_in_a_full_function_instead_of_failing(world_readable_tmp: Path) -> None:
    """`Client.map` sends 32 calls at a time: on a function whose scaling.max + scaling.queue
    is smaller, the first 429 (nothing ran: the queue was full) failed the whole map with
    TooManyRequests.  A refused call is sent again after the Retry-After the gateway gives;
    every item runs once and the results come in input order."""
    from spanfaas import Client

    d = world_readable_tmp / "src" / "busy"
    d.mkdir(parents=True)
    (d / "handler.py").write_text("import time\ndef handler(event, context):\n    time.sleep(0.1)\n    return event * 2\n")
    (d / "spanfaas.toml").write_text('name = "busy"\nisolation = "reuse"\n[scaling]\nmax = 1\nqueue = 1\n')
    with GatewayProcess(world_readable_tmp / "data", infra="local") as gw, Client(gw.url, gw.admin_token) as sf:
        sf.deploy(d)
        assert sf.map("busy", range(6), concurrency=6) == [0, 2, 4, 6, 8, 10]
        with httpx.Client(base_url=gw.url, headers=gw.headers) as c:
            records = c.get("/v1/invocations", params={"function": "busy", "limit": 100}).json()["invocations"]
            metrics = c.get("/metrics").text
    assert len(records) == 6 and all(r["status"] == "succeeded" for r in records), records  # each item ran once
    assert 'spanfaas_invocations_total{function="busy",status="refused"}' in metrics  # the queue did refuse some


def test_metrics_show_each_functions_live_instances(world_readable_tmp: Path) -> None:
    """/metrics had the instances of the whole infrastructure (spanfaas_instances{infra}) and
    the ones the autoscaler wants (spanfaas_desired_instances{function}), but not how many each
    function has: after a burst, or at scale to zero, nothing said which function held them.
    spanfaas_function_instances{infra,function} does: scaling.min's instances once called,
    and 0 once an idle function scaled to zero."""
    with GatewayProcess(world_readable_tmp / "data", infra="local") as gw, httpx.Client(base_url=gw.url, headers=gw.headers, timeout=60) as c:
        for name, scaling in (("kept", "min = 2\nmax = 3"), ("idle", "idle_ttl = 0.5")):
            d = function_dir(world_readable_tmp, name, "reuse")
            (d / "spanfaas.toml").write_text(f'name = "{name}"\nisolation = "reuse"\n[scaling]\n{scaling}\n')
            assert c.put(f"/v1/functions/{name}", content=pack_function(d)).status_code == 201
            assert c.post(f"/v1/functions/{name}/invoke", json={}).status_code == 200

        def gauge(name: str) -> str | None:
            prefix = f'spanfaas_function_instances{{function="{name}",infra="local"}} '
            return next((line[len(prefix) :] for line in c.get("/metrics").text.splitlines() if line.startswith(prefix)), None)

        deadline = time.monotonic() + 30
        while gauge("kept") != "2.0" or gauge("idle") != "0.0":  # min kept; the idle one scaled to zero
            assert time.monotonic() < deadline, (gauge("kept"), gauge("idle"))
            time.sleep(0.1)
        assert "# HELP spanfaas_function_instances" in c.get("/metrics").text
