"""How templates fork strict instances: what the function's code may rely on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from spanfaas.runtime import LocalRuntime
from tests.integration.runtime.conftest import Harness, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOOKED = """
import os

state = {"hook_ran_in": None}

def _after_in_child():
    state["hook_ran_in"] = os.getpid()

os.register_at_fork(after_in_child=_after_in_child)

def handler(event, context):
    return state["hook_ran_in"] == os.getpid()
"""

THREADED = """
import threading, time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()

def handler(event, context):
    return threading.active_count()
"""


async def test_the_functions_at_fork_hooks_run_in_every_instance(harness: Harness) -> None:
    await harness.deploy("hooked", HOOKED, "[scaling]\nmax = 4\nprefork = 2\n")
    results = await asyncio.gather(*(harness.invoke("hooked") for _ in range(20)))
    assert [json.loads(r.output) for r in results if r.ok] == [True] * 20, [r.error for r in results if not r.ok][:1]


async def test_threads_started_at_import_are_gone_in_an_instance(harness: Harness) -> None:
    await harness.deploy("threaded", THREADED)
    r = await harness.invoke("threaded")
    assert r.ok, r.error
    assert json.loads(r.output) == 1, "os.fork() semantics: only the calling thread lives on in the child"


async def test_instances_forked_while_calls_wait_answer_them(harness: Harness) -> None:
    """Forked on demand (calls queued), an instance says hello before warming up."""
    await harness.deploy("queued", "def handler(event, context):\n    return event\n", "[scaling]\nmax = 8\nprefork = 0\n")
    results = await asyncio.gather(*(harness.invoke("queued", b"%d" % i) for i in range(64)))
    assert [json.loads(r.output) for r in results] == list(range(64))


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
        except FileNotFoundError:
            return "dead"
        time.sleep(0.01)
    return "alive"
"""


@pytest.mark.asyncio(loop_scope="function")
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
