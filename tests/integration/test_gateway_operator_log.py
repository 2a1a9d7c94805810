"""What an operator reads in a gateway's log:

- with a remote site in ``[[infrastructures]]`` that refuses it from the start:
  one warning that names the site and says why, not one line per background refresh;
- after ``kill -USR1``: every thread's and every task's stack (a gateway that seems stuck);
- a graceful stop that does not end: the test harness kills it, and says so with the log's end.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

from spanning_support import infra_toml, start_gateway_on_free_port, world_readable_dir


def test_a_site_down_from_the_start_is_named_once_and_refreshes_stay_quiet() -> None:
    root = world_readable_dir("spanfaas-oplog-")

    def gateway(port: int) -> GatewayProcess:
        # The "site" is this gateway itself, without a token: it answers every refresh with 401.
        (root / "gw.toml").write_text(infra_toml(
            {"name": "local", "kind": "local"},
            {"name": "self", "kind": "remote", "address": f"http://127.0.0.1:{port}", "timeout": 2},
            scheduler={"refresh_interval": 0.1},
        ))  # fmt: skip
        return GatewayProcess(root / "data", infra="local", env={"SPANFAAS_CONFIG": str(root / "gw.toml")}, args=["--port", str(port)])

    gw: GatewayProcess | None = None
    try:
        gw = start_gateway_on_free_port(gateway)
        deadline = time.monotonic() + 10
        while "infrastructure self" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # about ten refreshes
        log = gw.log()  # (read before the stop, in which the site, being this gateway, goes away too)
        assert gw.stop() == 0
        assert "HTTP Request:" not in log, log  # httpx's line per request: one a refresh, for ever
        warnings = [line.split(": ", 1)[1] for line in log.splitlines() if "WARNING" in line and "infrastructure self" in line]
        # unreachable while the gateway was starting, then refusing: each said once
        assert 1 <= len(warnings) <= 2 and len(set(warnings)) == len(warnings), log
        assert "refuses our token (401)" in warnings[-1] and "check its token in [[infrastructures]]" in warnings[-1]
    finally:
        if gw is not None:
            gw.kill()
        shutil.rmtree(root, ignore_errors=True)


def test_sigusr1_writes_every_thread_and_task_stack_to_the_log(tmp_path) -> None:
    gw = GatewayProcess(tmp_path / "data", infra="memory")
    try:
        gw.start()
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "--- task" not in gw.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        log = gw.log()
        assert "stacks (SIGUSR1)" in log and "--- thread MainThread" in log, log
        assert "--- task" in log and "serve_async" in log, log  # the task that runs the server
        assert gw.stop() == 0  # the dump changed nothing: it stops as before
    finally:
        gw.kill()


def test_a_gateway_that_does_not_stop_is_killed_with_a_warning_that_shows_its_log(tmp_path) -> None:
    gw = GatewayProcess(tmp_path / "data", infra="memory")
    try:
        gw.start()
        assert gw.proc is not None
        os.kill(gw.proc.pid, signal.SIGSTOP)  # stuck: SIGTERM stays pending
        with pytest.warns(UserWarning, match=r"(?s)did not stop in 0.5 s after SIGTERM; killed\. Its log ends:\n.*listening"):
            assert gw.stop(timeout=0.5) == -signal.SIGKILL
        assert gw.proc is None
    finally:
        gw.kill()


SLOW = "import asyncio\n\nasync def handler(event, context):\n    await asyncio.sleep(60)\n"


def test_a_request_cut_short_by_a_stop_is_one_warning_that_names_it_not_an_error(tmp_path) -> None:
    """A request still running when the stop grace ran out: uvicorn logged
    'ERROR: Cancel 1 running task(s), timeout graceful shutdown exceeded' -- alarming, for a
    planned stop whose client got a clear 503.  The gateway says what it cut short, once, as a warning."""
    fn = tmp_path / "slow"
    fn.mkdir()
    (fn / "main.py").write_text(SLOW)
    (fn / "spanfaas.toml").write_text('name = "slow"\nhandler = "main:handler"\n[resources]\ntimeout = 60\n')
    gw = GatewayProcess(tmp_path / "data", infra="memory", env={"SPANFAAS_STOP_GRACE": "1"})
    answers: list[httpx.Response] = []
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/slow", content=pack_function(fn)).status_code == 201
            caller = threading.Thread(target=lambda: answers.append(c.post("/v1/functions/slow/invoke", json={})))
            caller.start()
            running: list[dict[str, object]] = []
            deadline = time.monotonic() + 10
            while not running and time.monotonic() < deadline:
                running = c.get("/v1/invocations", params={"function": "slow", "status": "running"}).json()["invocations"]
            assert running, gw.log()
            assert gw.stop() == 0
            caller.join(30)
        [answer] = answers
        assert answer.status_code == 503 and "the gateway stopped during the invocation" in answer.json()["detail"], answer.text
        log = gw.log()
        assert "ERROR" not in log and "timeout graceful shutdown exceeded" not in log, log
        [line] = [line for line in log.splitlines() if "cut short" in line]
        assert " WARNING spanfaas.gateway: " in line, log
        assert "1 request still in progress after the 1 s stop grace" in line and f"slow {running[0]['id']}" in line, line
    finally:
        gw.kill()
