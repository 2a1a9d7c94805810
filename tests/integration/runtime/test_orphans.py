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


CHAIN_CODE = """
import os, time

def handler(event, context):
    if event != "escape":
        return look(event)
    r, w = os.pipe()
    if os.fork() == 0:  # leaves the instance's group and outlives it: the template kills it...
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:  # ...and this one, its child, is the template's orphan from then on
            os.close(w)
            time.sleep(3600)
            os._exit(0)
        os.write(w, b"%d" % grandchild)
        time.sleep(3600)
        os._exit(0)
    os.close(w)
    return int(os.read(r, 32))


def look(pid):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the template kills it once its parent is reaped
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return "dead"
        except (FileNotFoundError, ProcessLookupError):
            return "dead"
        time.sleep(0.01)
    return "alive"
"""


async def test_a_grandchild_of_an_instance_dies_after_its_parent_is_killed(tmp_path: Path) -> None:
    """The template killed the orphans it had when it reaped an instance, but not the
    orphans a killed orphan left: a setsid() child's own child was re-parented to the
    template after that and ran on (past the call, into the next ones, while idle)."""
    tmp_path.chmod(0o755)
    rt = LocalRuntime(runtime_settings(tmp_path, sandbox=True))
    await rt.start()
    try:
        h = Harness(rt, tmp_path / "functions")
        await h.deploy("chain", CHAIN_CODE)
        if not any(p.name == "pid-namespace" and p.active for p in rt.pool("chain").protections):
            pytest.skip("no pid namespace here: orphans go to the host's init")
        escaped = await h.invoke("chain", b'"escape"')
        assert escaped.ok, escaped.error
        r = await h.invoke("chain", escaped.output)
        assert r.ok, r.error
        assert json.loads(r.output) == "dead"
    finally:
        await rt.close()
