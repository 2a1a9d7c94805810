"""The ``GatewayProcess`` test helper: a test run that is killed leaves no gateway behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import sys, time
from spanfaas.gateway.testing import GatewayProcess
gw = GatewayProcess(sys.argv[1], infra="local").start()
print(gw.proc.pid, flush=True)
time.sleep(600)
"""


def group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_a_gateway_dies_with_the_test_process_that_started_it(tmp_path: Path) -> None:
    """SIGKILL of the process that started a ``GatewayProcess`` (pytest, killed): the
    gateway and its process group are gone within seconds, not left running, reparented."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "data")], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    gw = 0
    try:
        assert parent.stdout is not None
        gw = int(parent.stdout.readline() or 0)
        assert gw and group(gw), "the gateway did not start"
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while group(gw) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = group(gw)
        assert not left, f"the gateway's process group outlived the process that started it: {left}"
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        if gw and group(gw):
            os.killpg(gw, signal.SIGKILL)
