"""Spare sandbox shells: forked ahead of deploys, taken by a function's first template.

A spare has its namespaces, pid 1 and cgroup join done before any deploy
(zygote.py); these tests check that a function started from one gets its
own name, cgroup and limits, and that a lost spare or ``spares = 0`` still
deploys the long way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.model import Result
from spanfaas.runtime import LocalRuntime

from .conftest import Harness, require

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBE = """
import os, socket

def handler(event, context):
    with open("/proc/self/cgroup") as f:
        cgroups = f.read()
    return {"host": socket.gethostname(), "pid": os.getpid(), "cgroups": cgroups}
"""


async def _runtime(tmp: Path, spares: int) -> LocalRuntime:
    tmp.chmod(0o755)
    settings = Settings(data_dir=str(tmp), runtime=RuntimeSettings(sandbox=True, cgroup_root="spanfaas-test", spares=spares))
    rt = LocalRuntime(settings)
    await rt.start()
    return rt


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def spared(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    tmp = tmp_path_factory.mktemp("rt-spares")
    rt = await _runtime(tmp, spares=1)
    try:
        yield Harness(rt, tmp / "functions")
    finally:
        await rt.close()


async def _spare_ready(rt: LocalRuntime, timeout: float = 10.0) -> tuple[str, int]:
    """A waiting spare's name and host pid."""
    zygote = rt._zygote_for(None)
    async with asyncio.timeout(timeout):
        while not zygote.spares:
            await asyncio.sleep(0.005)
    name = next(iter(zygote.spares))
    return name, zygote.spare_pids[name]


def _output(r: Result) -> Any:
    assert r.error is None, r.error
    return json.loads(r.output)


def _assert_in_function_cgroup(sb: Any, pid: int) -> None:
    """``pid`` is in the function's cgroup: renamed from the spare's (v1), with the function's memory limit."""
    from spanfaas.sandbox import cgroups

    dirs = sb.cgroup_dirs()
    assert dirs
    if all(h.version == 1 for h in cgroups.hierarchies().values()):  # v2 refuses renames: the spare's name stays
        assert all(not os.path.basename(d).startswith("spare-") for d in dirs), dirs
    memory = next(d for d in dirs if os.path.exists(os.path.join(d, "memory.max")) or "/memory/" in d)
    limit_file = "memory.max" if os.path.exists(os.path.join(memory, "memory.max")) else "memory.limit_in_bytes"
    with open(os.path.join(memory, limit_file)) as f:
        assert int(f.read()) == sb.plan.memory_bytes
    with open(os.path.join(memory, "cgroup.procs")) as f:
        assert pid in [int(x) for x in f.read().split()]


async def test_first_template_starts_in_a_spare_with_its_own_name_cgroup_and_limits(spared: Harness) -> None:
    require(spared, "pid-namespace", "mount-namespace", "cgroup-memory")
    spare, spare_pid = await _spare_ready(spared.rt)
    await spared.deploy("from-spare", PROBE, "[resources]\nmemory = 96\n")
    pool = spared.rt.pool("from-spare")
    assert pool.template_pid == spare_pid, "the template is the spare process itself"
    out = _output(await spared.invoke("from-spare"))
    assert out["host"] == "from-spare", "the hostname is set when the spare learns its function"
    assert out["pid"] > 1, "user code runs below pid 1 of the function's own pid namespace"
    _assert_in_function_cgroup(spared.rt._sandboxes[pool.key], spare_pid)
    # The next spare is forked once this template is up.
    assert (await _spare_ready(spared.rt))[0] != spare
    await spared.rt.remove("from-spare")


async def test_a_spare_that_died_unnoticed_is_replaced_by_the_long_way(spared: Harness) -> None:
    require(spared, "pid-namespace", "mount-namespace")
    _, spare_pid = await _spare_ready(spared.rt)
    os.kill(spare_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _state(spare_pid) != "gone" and time.monotonic() < deadline:
        time.sleep(0.001)  # noqa: ASYNC251 -- blocking on purpose: the runtime must not learn of it yet
    await spared.deploy("after-lost-spare", PROBE)
    out = _output(await spared.invoke("after-lost-spare"))
    assert out["host"] == "after-lost-spare"
    await spared.rt.remove("after-lost-spare")


async def test_a_spare_that_died_waiting_is_removed_and_replaced(spared: Harness) -> None:
    require(spared, "pid-namespace", "mount-namespace", "cgroup-memory")
    zygote = spared.rt._zygote_for(None)
    name, spare_pid = await _spare_ready(spared.rt)
    cgroup = zygote.spares[name]
    assert any(os.path.isdir(d) for d in cgroup.directories())
    os.kill(spare_pid, signal.SIGKILL)
    async with asyncio.timeout(5):  # the runtime learns it and forks another
        while name in zygote.spares or not zygote.spares:
            await asyncio.sleep(0.005)
    assert name not in zygote.spare_pids
    assert not any(os.path.isdir(d) for d in cgroup.directories()), "the dead spare's cgroup is removed"
    _, new_pid = await _spare_ready(spared.rt)
    assert new_pid != spare_pid
    await spared.deploy("after-dead-spare", PROBE)
    pool = spared.rt.pool("after-dead-spare")
    assert pool.template_pid == new_pid, "the replacement is taken"
    assert _output(await spared.invoke("after-dead-spare"))["host"] == "after-dead-spare"
    await spared.rt.remove("after-dead-spare")


async def test_no_spares_when_disabled(tmp_path: Path) -> None:
    rt = await _runtime(tmp_path, spares=0)
    try:
        h = Harness(rt, tmp_path / "functions")
        require(h, "pid-namespace", "mount-namespace")
        zygote = rt._zygote_for(None)
        assert not zygote.spares and not zygote.pending_spares
        await h.deploy("no-spare", PROBE)
        assert _output(await h.invoke("no-spare"))["host"] == "no-spare"
    finally:
        await rt.close()


async def test_a_restart_after_scaling_to_zero_takes_a_spare_and_its_cgroup(spared: Harness) -> None:
    require(spared, "pid-namespace", "mount-namespace", "cgroup-memory")
    await spared.deploy("napper", PROBE, 'isolation = "reuse"\n[scaling]\nidle_ttl = 0.3\n[resources]\nmemory = 80\n')
    pool = spared.rt.pool("napper")
    first = _output(await spared.invoke("napper"))
    sb = spared.rt._sandboxes[pool.key]
    async with asyncio.timeout(10):
        while pool.state != "cold" or sb.cgroup_pids():  # the old template is gone, not just told to go
            await asyncio.sleep(0.05)
    spare, spare_pid = await _spare_ready(spared.rt)
    again = await spared.invoke("napper")
    assert again.cold and pool.template_pid == spare_pid, "the restart is the spare"
    assert _output(again)["host"] == first["host"] == "napper"
    _assert_in_function_cgroup(sb, spare_pid)
    await spared.rt.remove("napper")


async def test_a_zygote_killed_with_a_spare_waiting_leaves_nothing_and_functions_restart(tmp_path: Path) -> None:
    rt = await _runtime(tmp_path, spares=1)
    try:
        h = Harness(rt, tmp_path / "functions")
        require(h, "pid-namespace", "mount-namespace")
        await h.deploy("survivor", PROBE)
        assert _output(await h.invoke("survivor"))["host"] == "survivor"
        zygote = rt._zygote_for(None)
        _, spare_pid = await _spare_ready(rt)
        assert zygote.proc is not None
        os.kill(zygote.proc.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            while zygote.alive:
                await asyncio.sleep(0.01)
            while os.path.exists(f"/proc/{spare_pid}") and _state(spare_pid) != "Z":
                await asyncio.sleep(0.01)  # the spare sees its channel close and exits
        assert not zygote.spares and not zygote.pending_spares
        r = await h.invoke("survivor")  # a new zygote, a new template
        assert r.cold and _output(r)["host"] == "survivor"
    finally:
        await rt.close()


async def test_a_cgroup_that_cannot_be_removed_stops_neither_a_zygote_restart_nor_a_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing a cgroup can fail (a process that will not die, EBUSY): the
    runtime logs it and goes on -- the dead zygote's pools are still stopped
    (its functions restart), and a remove still forgets the function."""
    from spanfaas import sandbox

    real = sandbox.Cgroup.destroy
    failing = {"on": False}

    def destroy(self: Any) -> None:
        if failing["on"]:
            raise sandbox.SandboxError("cannot remove cgroup: busy (test)")
        real(self)

    monkeypatch.setattr(sandbox.Cgroup, "destroy", destroy)
    rt = await _runtime(tmp_path, spares=1)
    try:
        h = Harness(rt, tmp_path / "functions")
        require(h, "pid-namespace", "mount-namespace")
        await h.deploy("survivor", PROBE)
        await h.invoke("survivor")
        zygote = rt._zygote_for(None)
        await _spare_ready(rt)
        assert zygote.proc is not None
        failing["on"] = True
        os.kill(zygote.proc.pid, signal.SIGKILL)
        async with asyncio.timeout(10):
            while zygote.alive:
                await asyncio.sleep(0.01)
        r = await h.invoke("survivor")  # its pool was stopped: a new zygote, a new template
        assert r.cold and _output(r)["host"] == "survivor"
        await rt.remove("survivor")
        assert "survivor" not in rt.functions()
    finally:
        failing["on"] = False
        await rt.close()  # the real removal, and the sweep of the runtime's cgroup root


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _own_proc_mounts(pid: int) -> int:
    """How many procfs are mounted on /proc in ``pid``'s mount namespace."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return sum(1 for line in f if line.split()[4] == "/proc" and line.split(" - ")[1].split()[0] == "proc")


async def test_a_spare_is_reported_ready_only_once_its_fitter_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A function's fitter joins the spare's mount namespace and resolves /proc
    for the Landlock ruleset: were the spare's own /proc not mounted yet, the
    rule would hold the host's and the function be refused /proc/self/cgroup.
    So at the moment the runtime hears a spare is ready, it is in its cgroup
    with its own /proc."""
    from spanfaas.runtime import zygotes

    seen: list[tuple[int, bool, int]] = []  # (pid, in its cgroup, procfs on /proc)
    real = zygotes.ZygoteProcess.spare_ready

    def observe(self: Any, name: str, pid: int) -> Any:
        cgroup = self.pending_spares.get(name)
        if pid > 0 and cgroup is not None:
            joined = True
            for d in cgroup.directories():
                with open(os.path.join(d, "cgroup.procs")) as f:
                    joined = joined and pid in [int(x) for x in f.read().split()]
            seen.append((pid, joined, _own_proc_mounts(pid)))
        return real(self, name, pid)

    monkeypatch.setattr(zygotes.ZygoteProcess, "spare_ready", observe)
    rt = await _runtime(tmp_path, spares=1)
    try:
        h = Harness(rt, tmp_path / "functions")
        require(h, "pid-namespace", "mount-namespace")
        zygote = rt._zygote_for(None)
        for _ in range(3):  # each spare killed is replaced: three announcements
            _, spare_pid = await _spare_ready(rt)
            os.kill(spare_pid, signal.SIGKILL)
            async with asyncio.timeout(10):
                while spare_pid in zygote.spare_pids.values():
                    await asyncio.sleep(0.005)
        ours = _own_proc_mounts(os.getpid())
        assert seen and all(joined and procs == ours + 1 for _pid, joined, procs in seen), (ours, seen)
    finally:
        await rt.close()
