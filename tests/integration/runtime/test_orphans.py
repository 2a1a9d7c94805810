"""A process an instance forked dies with it, even if it left the instance's group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="function")

ESCAPER = """
import os, time

def handler(event, context):
    if event == "escape":
        pid = os.fork()
        if pid == 0:
            os.setsid()  # leaves the instance's process group
            time.sleep(3600)
            os._exit(0)
        return pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the template kills it once it reaped the instance
        try:
            with open(f"/proc/{event}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return "dead"
        except (FileNotFoundError, ProcessLookupError):  # ESRCH: read while it was being reaped
            return "dead"
        time.sleep(0.01)
    return "alive"
"""


async def test_a_process_that_left_the_instances_group_dies_after_it(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=True))
    await rt.start()
    try:
        h = Harness(rt, tmp_path / "functions")
        await h.deploy("escaper", ESCAPER)
        if not any(p.name == "pid-namespace" and p.active for p in rt.pool("escaper").protections):
            pytest.skip("no pid namespace here: orphans go to the host's init")
        escaped = await h.invoke("escaper", b'"escape"')
        assert escaped.ok, escaped.error
        r = await h.invoke("escaper", escaped.output)
        assert r.ok, r.error
        assert json.loads(r.output) == "dead"
    finally:
        await rt.close()
