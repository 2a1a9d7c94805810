"""A handler that calls ``os.fork()`` without exec: its copy of the instance never
answers for it, and what it leaves running ends with the instance."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path

import pytest

from tests.integration.runtime.conftest import Harness

pytestmark = pytest.mark.asyncio(loop_scope="module")

FORKER = """
import ctypes, os, sys, time

{kw}def handler(event, context):
    if event["do"] == "pid":
        return os.getpid()
    if event["do"] == "lean":
        from spanfaas.runtime.forking import forker
        return forker.why_not_lean()
    print("before the fork")
    pid = os.fork()
    if pid == 0:
        # PR_SET_NAME: the test finds the child by its name, whatever its pid namespace.
        ctypes.CDLL(None).prctl(15, event["tag"].encode(), 0, 0, 0)
        child = event["child"]
        if child == "setsid":  # out of the instance's process group: its killpg misses it
            os.setsid()
            if os.fork() == 0:  # and its parent gone: re-parented
                ctypes.CDLL(None).prctl(15, event["tag"].encode(), 0, 0, 0)
                time.sleep(60)
            os._exit(0)
        if child == "sleep":
            time.sleep(60)
        if child == "exit":
            sys.exit(7)
        if child == "raise":
            raise ValueError("raised in the child")
        return {"from": "child"}  # back into the platform's code, a copy of the instance
    print("after the fork")
    if event["wait"]:
        _, status = os.waitpid(pid, 0)
        return {"from": "parent", "child_exit": os.waitstatus_to_exitcode(status)}
    time.sleep(0.2)  # a copy that answered would have answered first
    return {"from": "parent"}
"""

MODES = {
    "strict": 'isolation = "strict"\n',
    "reuse": 'isolation = "reuse"\n',
    "reuse-concurrent": 'isolation = "reuse"\n[resources]\nconcurrency = 4\n',  # worker threads
    "reuse-async": 'isolation = "reuse"\n',
    "reuse-concurrent-async": 'isolation = "reuse"\n[resources]\nconcurrency = 4\n',  # the loop thread
}

_tags = itertools.count()


@pytest.fixture(params=["plain", "sandboxed"])
def h(request: pytest.FixtureRequest) -> Harness:
    harness: Harness = request.getfixturevalue("harness" if request.param == "plain" else "sandboxed")
    return harness


def _named(tag: str) -> dict[int, str]:
    """The processes named ``tag`` (host pids) and their states."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() != tag:
                    continue
                found[int(entry)] = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0].decode()
            except OSError:
                continue
    return found


async def _running(tag: str, *, until_gone: bool = True, within: float = 5.0) -> list[int]:
    """Processes named ``tag`` that still run (a zombie has ended), after waiting
    up to ``within`` seconds for them to end (``until_gone``)."""
    for _ in range(int(within / 0.02)):
        running = [pid for pid, state in _named(tag).items() if state != "Z"]
        if not running or not until_gone:
            return running
        await asyncio.sleep(0.02)
    return running


async def _deploy(h: Harness, mode: str) -> str:
    name = f"forker-{mode}"
    if name not in h.rt.functions():
        code = FORKER.replace("{kw}", "async " if mode.endswith("async") else "")
        await h.deploy(name, code, MODES[mode] + ("" if "[resources]" in MODES[mode] else "[resources]\n") + "timeout = 3\n")
    return name


async def _pid(h: Harness, name: str) -> int:
    r = await h.invoke(name, b'{"do": "pid"}')
    assert r.ok, r.error
    return int(json.loads(r.output))


def _tag() -> str:
    return f"sf-fork-{os.getpid() % 10000}-{next(_tags)}"[:15]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize(("child", "status"), [("return", 0), ("exit", 7), ("raise", 1)])
async def test_a_forked_copy_back_in_the_platform_exits_without_answering(h: Harness, mode: str, child: str, status: int) -> None:
    """The child returns (or raises, or calls sys.exit()) into the platform's code: it
    exits at once with the status Python would give it, never answers, never reads
    the next request, never touches the parent's logs; the parent answers once."""
    name = await _deploy(h, mode)
    before = await _pid(h, name)
    tag = _tag()
    r = await h.invoke(name, json.dumps({"do": "fork", "child": child, "tag": tag, "wait": True}).encode())
    assert r.ok, r.error
    assert json.loads(r.output) == {"from": "parent", "child_exit": status}
    assert "before the fork" in r.logs and "after the fork" in r.logs, r.logs
    if child == "raise" and "concurrent" not in mode:  # (a concurrent instance reports only what each call prints)
        assert "ValueError: raised in the child" in r.logs, "the child's traceback goes to its stderr, as Python prints it"
    assert await _running(tag) == []
    pids = [await _pid(h, name) for _ in range(5)]
    if mode != "strict":
        assert pids == [before] * 5, "another process answered on the instance's socket"


@pytest.mark.parametrize("mode", list(MODES))
async def test_a_forked_copy_nobody_waits_for_ends(h: Harness, mode: str) -> None:
    name = await _deploy(h, mode)
    tag = _tag()
    r = await h.invoke(name, json.dumps({"do": "fork", "child": "return", "tag": tag, "wait": False}).encode())
    assert r.ok, r.error
    assert json.loads(r.output) == {"from": "parent"}, "the child answered for its parent"
    assert "before the fork" in r.logs, "the child took the parent's logs"
    assert await _running(tag) == []
    assert (await h.invoke(name, b'{"do": "pid"}')).ok


async def test_a_forked_child_left_running_dies_with_its_strict_instance(h: Harness) -> None:
    name = await _deploy(h, "strict")
    tag = _tag()
    r = await h.invoke(name, json.dumps({"do": "fork", "child": "sleep", "tag": tag, "wait": False}).encode())
    assert r.ok, r.error
    assert await _running(tag) == [], "a process the invocation forked outlived it"
    assert (await h.invoke(name, b'{"do": "pid"}')).ok


async def test_a_grandchild_that_left_the_group_dies_with_its_strict_instance(h: Harness) -> None:
    """setsid() and an exited parent: without a pid namespace it was re-parented to
    the host's init and ran on; the template is its subreaper and kills it."""
    name = await _deploy(h, "strict")
    reaping = next(x for x in h.rt.info()["pools"][name]["protections"] if x.name == "orphan-reaping")
    assert reaping.active, reaping.reason  # reported per function: in the runtime's info, not in a log nobody reads
    pid_ns = any(x.name == "pid-namespace" and x.active for x in h.rt.pool(name).protections)
    # Under a pid namespace's reaper (pid 1) the template is pid 2 and their subreaper too.
    assert "subreaper" in reaping.reason or (pid_ns and "pid 1" in reaping.reason), reaping.reason
    tag = _tag()
    r = await h.invoke(name, json.dumps({"do": "fork", "child": "setsid", "tag": tag, "wait": True}).encode())
    assert r.ok, r.error
    assert await _running(tag) == [], "a process the invocation forked outlived it"
    assert (await h.invoke(name, b'{"do": "pid"}')).ok


async def test_a_functions_orphan_reaping_is_where_the_docs_say_and_only_there(h: Harness) -> None:
    """docs/runtime.md named ``pools.NAME.protections``, which no API or CLI showed: it names the
    runtime's info record, whose expression is evaluated here, and says the host's
    list (``GET /v1/info``, ``spanfaas info``/``doctor``) lacks it -- as it does."""
    import re

    doc = (Path(__file__).parents[3] / "docs" / "runtime.md").read_text(encoding="utf-8")
    where = re.search(r"Where to see it:\*\*.*", doc)
    assert where is not None
    named = re.findall(r"`(LocalRuntime\.info\(\)[^`]*)`", where.group(0))
    assert named == ['LocalRuntime.info()["pools"][NAME]["protections"]'], where.group(0)
    name = await _deploy(h, "strict")
    record = h.rt.info()["pools"][name]["protections"]  # (the expression named, as written)
    assert any(x.name == "orphan-reaping" for x in record), record
    assert not any(x.name == "orphan-reaping" for x in h.rt.info()["protections"]), "the host's list has it too: say so"
    assert "none of them shows this one" in where.group(0)


@pytest.mark.parametrize("mode", ["reuse", "reuse-concurrent-async"])
async def test_a_forked_child_left_running_lives_with_its_reuse_instance(h: Harness, mode: str) -> None:
    """As documented: on a reuse instance what a call started runs on (like a
    background process on other FaaS) until the instance ends."""
    name = await _deploy(h, mode)
    tag = _tag()
    r = await h.invoke(name, json.dumps({"do": "fork", "child": "sleep", "tag": tag, "wait": False}).encode())
    assert r.ok, r.error
    assert len(await _running(tag, until_gone=False)) == 1
    assert (await h.invoke(name, b'{"do": "pid"}')).ok
    h.rt.pool(name).stop_template()  # as scale-to-zero does
    assert await _running(tag) == [], "a process the instance forked outlived it"
    assert (await h.invoke(name, b'{"do": "pid"}')).ok


async def test_the_fork_guard_keeps_templates_forking_without_the_hooks(harness: Harness) -> None:
    """The guard is an at-fork hook the template registers: a vetted one, so
    instances are still forked with libc's fork() (runtime/forking.py)."""
    name = await _deploy(harness, "strict")
    r = await harness.invoke(name, b'{"do": "lean"}')
    assert r.ok, r.error
    assert json.loads(r.output) == ""
