"""Async invocations that wait in their function's queue survive crashes of the gateway.

A gateway claims more invocations than a function with ``scaling.max = 1`` runs at
once: the others wait in the pool's queue.  SIGKILLed, the gateway left every claim
counted as a re-run, also of the invocations that never started, so after 4 crashes
in a row those failed ('not run again: 4 runs ended without a stored outcome')
though they never ran.  Only a run that started is a re-run now."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.dispatcher import CRASH_RERUNS
from spanfaas.gateway.testing import GatewayProcess

GATED = """
import socket
def handler(event, context):
    # Tells the test it runs, and waits for its word (which may never come: the gateway is killed).
    with socket.create_connection(("127.0.0.1", event["port"]), timeout=600) as s:
        s.sendall(context.invocation_id.encode() + b"\\n")
        return {"said": s.recv(16).decode(), "id": context.invocation_id}
"""

N = 6
KILLS = 4


class Gate:
    """The test's end of the handlers' connections: holds the first run of each invocation
    (until the gateway is killed under it), answers a run again at once, or every run once
    ``open``."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.02)
        self.port: int = self.server.getsockname()[1]
        self.starts: dict[str, int] = {}
        self.held: dict[str, socket.socket] = {}
        self.answered: set[str] = set()
        self.open = False

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                return
            conn.settimeout(10)
            with contextlib.ExitStack() as keep:
                keep.callback(conn.close)
                id = conn.makefile("rb").readline().decode().strip()
                self.starts[id] = self.starts.get(id, 0) + 1
                if self.open or self.starts[id] > 1:
                    conn.sendall(b"go")
                    self.answered.add(id)
                else:
                    self.held[id] = conn
                    keep.pop_all()

    def drop_held(self) -> list[str]:
        ids = list(self.held)
        for conn in self.held.values():
            conn.close()
        self.held = {}
        return ids

    def close(self) -> None:
        self.drop_held()
        self.server.close()


def _rows(db: Path) -> dict[str, tuple[str, int]]:
    with contextlib.closing(sqlite3.connect(db)) as c:
        return {id: (status, started) for id, status, started in c.execute("SELECT id, status, started FROM invocations")}


@pytest.mark.slow
def test_invocations_waiting_in_the_queue_survive_crashes_in_a_row(tmp_path: Path) -> None:
    src = tmp_path / "gated"
    src.mkdir()
    (src / "handler.py").write_text(GATED)
    (src / "spanfaas.toml").write_text(
        'name = "gated"\nnetwork = "host"\nisolation = "reuse"\n[scaling]\nmax = 1\n[resources]\ntimeout = 600\n'
    )
    db = tmp_path / "data" / "spanfaas.db"
    gate = Gate()
    gw = GatewayProcess(tmp_path / "data", infra="local")
    killed_running: list[str] = []
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/gated", content=pack_function(src)).status_code == 201
            ids = [c.post("/v1/functions/gated/invoke?mode=async", json={"port": gate.port}).json()["id"] for _ in range(N)]
        for _ in range(KILLS):
            # One invocation runs (held), the others wait behind it; the start of the one
            # that runs is marked in the store, and the outcomes of the runs answered are stored.
            deadline = time.monotonic() + 60
            while True:
                gate.serve()
                rows = _rows(db)
                if (len(gate.held) == 1 and all(rows[id][1] == 1 for id in gate.held)
                        and all(rows[id][0] == "succeeded" for id in gate.answered)):  # fmt: skip
                    break
                assert time.monotonic() < deadline, (gate.starts, gate.held, rows, gw.log())
                time.sleep(0.02)
            gw.kill()
            killed_running += gate.drop_held()
            gw.start()
        gate.open = True
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deadline = time.monotonic() + 60
            while True:
                gate.serve()
                views = {id: c.get(f"/v1/invocations/{id}").json() for id in ids}
                if all(v["status"] in ("succeeded", "failed") for v in views.values()):
                    break
                assert time.monotonic() < deadline, views
                time.sleep(0.05)
    finally:
        gw.stop()
        gate.close()
    assert len(set(killed_running)) == KILLS, killed_running  # a new one ran each time
    for id, v in views.items():
        assert v["status"] == "succeeded" and v["result"] == {"said": "go", "id": id}, v
        reruns = 1 if id in killed_running else 0  # it was running when its gateway was killed
        assert (v["reruns"], v["attempts"], gate.starts[id]) == (reruns, reruns + 1, reruns + 1), v
    never_ran = [views[id] for id in ids if id not in killed_running]
    assert len(never_ran) == N - KILLS
    # claimed by every gateway that was killed, and waited each time: more than CRASH_RERUNS
    assert all(v["reclaims"] == KILLS > CRASH_RERUNS for v in never_ran), never_ran


@pytest.mark.slow
def test_a_run_that_starts_while_the_gateway_stops_is_marked_started(tmp_path: Path) -> None:
    """The dispatcher stopped writing start marks as its stop began, before the grace its runs
    are given: a run that started then (a claim that waited behind another run) was never
    marked, and a gateway killed during the grace left it counted as a claim given back
    (``reclaims``, up to CRASH_RECLAIMS) though it ran: a re-run not bounded by CRASH_RERUNS."""
    src = tmp_path / "gated"
    src.mkdir()
    (src / "handler.py").write_text(GATED)
    (src / "spanfaas.toml").write_text(
        'name = "gated"\nnetwork = "host"\nisolation = "reuse"\n[scaling]\nmax = 1\n[resources]\ntimeout = 600\n'
    )
    db = tmp_path / "data" / "spanfaas.db"
    gate = Gate()
    gw = GatewayProcess(tmp_path / "data", infra="local")
    try:
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            assert c.put("/v1/functions/gated", content=pack_function(src)).status_code == 201
            first, second = (c.post("/v1/functions/gated/invoke?mode=async", json={"port": gate.port}).json()["id"]
                             for _ in range(2))  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # the first runs (held), marked; the second, claimed, waits behind it
            gate.serve()
            rows = _rows(db)
            if list(gate.held) == [first] and rows[first] == ("running", 1) and rows[second] == ("running", 0):
                break
            assert time.monotonic() < deadline, (gate.starts, rows, gw.log())
            time.sleep(0.02)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)  # a graceful stop: the runs have their grace (stop_grace, 10 s)
        while not re.search(r"async invocations given \d+ s to end", gw.log()):  # the dispatcher stops
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.01)
        with gate.held.pop(first) as conn:  # the first ends; the second starts, during the grace
            conn.sendall(b"go")
        gate.answered.add(first)
        while second not in gate.held:
            gate.serve()
            assert time.monotonic() < deadline, (gate.starts, gw.log())
        deadline = time.monotonic() + 3  # within the grace: the gateway still runs the second
        while _rows(db)[second] != ("running", 1):
            assert time.monotonic() < deadline, ("the second run's start was not marked", _rows(db), gw.log())
            time.sleep(0.02)
        gw.kill()  # during the grace
        gate.drop_held()
        gw.start()
        with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
            deadline = time.monotonic() + 60
            while (v := c.get(f"/v1/invocations/{second}").json())["status"] not in ("succeeded", "failed"):
                gate.serve()
                assert time.monotonic() < deadline, v
                time.sleep(0.05)
    finally:
        gw.stop()
        gate.close()
    assert v["status"] == "succeeded" and v["result"] == {"said": "go", "id": second}, v
    assert (v["reruns"], v["reclaims"], v["attempts"], gate.starts[second]) == (1, 0, 2, 2), v
