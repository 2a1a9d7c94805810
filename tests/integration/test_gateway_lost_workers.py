"""Workers lost under an accepted invocation: a gateway on the local runtime whose
zygote or template is SIGKILLed while an async invocation runs on it runs the
invocation again (a platform failure), instead of recording the function as crashed."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from spanfaas.gateway import pack_function
from spanfaas.gateway.testing import GatewayProcess

GATED = """
import socket
def handler(event, context):
    # Connects to the test, which answers once it has killed what it was asked to kill.
    with socket.create_connection(("127.0.0.1", event["port"]), timeout=60) as s:
        return {"said": s.recv(16).decode()}
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _victim(gateway_pid: int, what: str, conn: socket.socket) -> int:
    """The gateway's zygote, or the template: the parent of the instance at the other end
    of ``conn`` (the zygote's other children with children of their own, such as a spare
    shell whose fitter waits in it, are not it)."""
    (zygote,) = [p for p in _children(gateway_pid) if b"spanfaas.runtime.zygote" in Path(f"/proc/{p}/cmdline").read_bytes()]
    if what == "zygote":
        return zygote
    instance = _holder(conn.getpeername()[1])
    (template,) = [p for p in _children(zygote) if instance in _children(p)]
    return template


def _holder(local_port: int) -> int:
    """The pid whose TCP socket has ``local_port`` (the function runs with network = "host")."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == local_port:
            inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    raise AssertionError(f"no process holds a socket on port {local_port}")


@pytest.mark.parametrize("what", ["zygote", "template"])
def test_an_async_invocation_whose_worker_was_killed_runs_again(tmp_path: Path, what: str) -> None:
    """Its instance went with its template: the run was recorded failed as the function's
    crash ('the instance was lost (its template or the runtime stopped it)', kind crashed)
    and never run again, so a crash of the platform's own processes lost accepted work."""
    import os
    import signal

    src = tmp_path / "gated"
    src.mkdir()
    (src / "handler.py").write_text(GATED)
    (src / "spanfaas.toml").write_text('name = "gated"\nnetwork = "host"\n')
    gw = GatewayProcess(tmp_path / "data", infra="local", env={"SPANFAAS_ASYNC_BACKOFF": "0.05"})
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(0.05)
        port = gate.getsockname()[1]
        try:
            gw.start()
            assert gw.proc is not None
            with httpx.Client(base_url=gw.url, headers=gw.headers, timeout=30) as c:
                assert c.put("/v1/functions/gated", content=pack_function(src)).status_code == 201
                id = c.post("/v1/functions/gated/invoke?mode=async", json={"port": port}).json()["id"]

                def view() -> dict[str, Any]:
                    return dict(c.get(f"/v1/invocations/{id}").json())

                first = _accept(gate, view)  # the handler runs
                assert first is not None, view()
                with first:
                    os.kill(_victim(gw.proc.pid, what, first), signal.SIGKILL)
                    second = _accept(gate, view)  # run again, on a new template
                    assert second is not None, view()
                    with second:
                        second.sendall(b"go")
                        deadline = time.monotonic() + 30
                        while (done := view())["status"] not in ("succeeded", "failed"):
                            assert time.monotonic() < deadline, done
                            time.sleep(0.02)
            assert done["status"] == "succeeded" and done["result"] == {"said": "go"}, done
            assert done["attempts"] == 2 and done["reruns"] == 0, done  # a retry of a platform failure
        finally:
            gw.stop()


def _accept(gate: socket.socket, view: Callable[[], dict[str, Any]], timeout: float = 30) -> socket.socket | None:
    """The handler's next connection; None once the invocation ended without making one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return gate.accept()[0]
        except TimeoutError:
            if view()["status"] in ("succeeded", "failed"):
                return None
    raise TimeoutError("the handler did not connect")
