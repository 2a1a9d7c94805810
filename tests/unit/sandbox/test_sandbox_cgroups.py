"""Cgroup: limits applied for real — OOM kill, fork bomb, CPU quota, cleanup."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spanfaas.sandbox import Cgroup, cleanup_cgroups
from spanfaas.sandbox import cgroups as cgroups_module
from spanfaas.sandbox.cgroups import Hierarchy, _limit_cpu, _limit_memory, _limit_pids, hierarchies

MiB = 1 << 20


def _read(ctrl: str, root: str, name: str, file: str) -> str:
    h = hierarchies()[ctrl]
    with open(os.path.join(h.mount, root, name, file)) as f:
        return f.read().strip()


def test_create_is_idempotent_and_sets_limits(cgroup_root: str) -> None:
    cg = Cgroup.create(cgroup_root, "fn", memory_bytes=64 * MiB, cpu=0.5, pids=8)
    try:
        assert [(p.name, p.active) for p in cg.active] == [
            ("cgroup-memory", True),
            ("cgroup-cpu", True),
            ("cgroup-pids", True),
        ]
        again = Cgroup.create(cgroup_root, "fn", memory_bytes=128 * MiB, cpu=0, pids=0)
        assert [p.active for p in again.active] == [True, False, False], "0 = no limit"
        assert _read("pids", cgroup_root, "fn", "pids.max") == "max"
        if hierarchies()["memory"].version == 1:
            assert int(_read("memory", cgroup_root, "fn", "memory.limit_in_bytes")) == 128 * MiB
        else:
            assert int(_read("memory", cgroup_root, "fn", "memory.max")) == 128 * MiB
        assert cg.pids() == [] and cg.oom_kills() == 0
        assert cg.directories() == sorted(os.path.join(h.mount, cgroup_root, "fn") for h in hierarchies().values())
    finally:
        cg.destroy()
    cg.destroy()  # idempotent


def test_missing_controllers_degrade(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups_module, "hierarchies", lambda: {})
    cg = Cgroup.create("spanfaas-none", "fn", memory_bytes=MiB, cpu=1, pids=4)
    assert [p.active for p in cg.active] == [False, False, False]
    assert all("no " in p.reason for p in cg.active)
    cg.attach(os.getpid())  # nothing to attach to: a no-op, not an error
    assert cg.pids() == [] and cg.oom_kills() == 0
    cg.destroy()


def _memory_bomb(cg: Cgroup) -> None:
    cg.attach(os.getpid())
    blob = b"\x01" * (200 * MiB)  # touches every page
    del blob


def test_memory_bomb_is_oom_killed(cgroup_root: str, in_child: Callable[..., Any]) -> None:
    cg = Cgroup.create(cgroup_root, "bomb", memory_bytes=64 * MiB, cpu=0, pids=0)
    try:
        assert cg.oom_kills() == 0
        child = in_child(_memory_bomb, cg)
        assert child.signal == signal.SIGKILL, f"child exited with status {child.status:#x}"
        assert cg.oom_kills() == 1
    finally:
        cg.destroy()


def _fork_bomb(cg: Cgroup) -> int:
    cg.attach(os.getpid())
    forked = 0
    for _ in range(64):
        try:
            pid = os.fork()
        except BlockingIOError:  # EAGAIN from pids.max
            break
        if pid == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(0)
        forked += 1
    return forked


def test_fork_bomb_is_contained_and_killed(cgroup_root: str, in_child: Callable[..., Any]) -> None:
    cg = Cgroup.create(cgroup_root, "forks", memory_bytes=0, cpu=0, pids=8)
    try:
        child = in_child(_fork_bomb, cg)
        assert child.value == 7, "pids.max 8: the bomb itself plus 7 children"
        assert len(cg.pids()) == 7, "the orphans are still in the cgroup"
        cg.kill_all()
        assert cg.pids() == []
    finally:
        cg.destroy()
    assert not any(os.path.exists(os.path.join(h.mount, cgroup_root, "forks")) for h in hierarchies().values())


def _spin(cg: Cgroup, seconds: float) -> float:
    cg.attach(os.getpid())
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        pass
    t = os.times()
    return t.user + t.system


def test_cpu_quota_throttles(cgroup_root: str, in_child: Callable[..., Any]) -> None:
    cg = Cgroup.create(cgroup_root, "spin", memory_bytes=0, cpu=0.1, pids=0)
    try:
        cpu_seconds = in_child(_spin, cg, 0.4).value
        stat = dict(line.split() for line in _read("cpu", cgroup_root, "spin", "cpu.stat").splitlines())
        assert int(stat["nr_throttled"]) > 0
        assert cpu_seconds < 0.2, f"0.1 cores for 0.4 s wall used {cpu_seconds:.3f} s of CPU"
    finally:
        cg.destroy()


def test_cleanup_kills_leftovers_of_a_crashed_run(cgroup_root: str) -> None:
    cg = Cgroup.create(cgroup_root, "left", memory_bytes=32 * MiB, cpu=0, pids=4)
    Cgroup.create(cgroup_root, "empty", memory_bytes=0, cpu=0, pids=0)
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        cg.attach(pid)
        assert cg.pids() == [pid]
        cleanup_cgroups(cgroup_root)  # as a restarted runtime would, without the Cgroup objects
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not any(os.path.exists(os.path.join(h.mount, cgroup_root)) for h in hierarchies().values())


def _fresh(d: Path, *files: str) -> None:
    for f in files:
        (d / f).write_text("")


def test_v2_limit_files(tmp_path: Path) -> None:
    """The unified-hierarchy file formats, on plain files (no v2 controllers on every host)."""
    h, d = Hierarchy(2, str(tmp_path)), str(tmp_path)
    _fresh(tmp_path, "memory.max", "memory.swap.max", "cpu.max", "pids.max")
    assert _limit_memory(h, d, 64 * MiB) == "max 64 MiB, no swap"
    assert _limit_cpu(h, d, 0.5) == "quota 50000 us per 100000 us"
    assert _limit_pids(h, d, 8) == "max 8"
    files = {f: (tmp_path / f).read_text() for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max")}
    assert files == {"memory.max": str(64 * MiB), "memory.swap.max": "0", "cpu.max": "50000 100000", "pids.max": "8"}
    _fresh(tmp_path, "memory.max", "memory.swap.max", "cpu.max", "pids.max")
    _limit_memory(h, d, 0)
    _limit_cpu(h, d, 0)
    _limit_pids(h, d, 0)
    files = {f: (tmp_path / f).read_text() for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max")}
    assert files == {"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000", "pids.max": "max"}
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert Cgroup("fake", {"memory": (h, d)}, []).oom_kills() == 2


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2" and os.access(left.split()[4], os.W_OK):
                return left.split()[4]
    return None


def test_v2_attach_kill_destroy_for_real() -> None:
    """cgroup.kill and the unified layout, on any writable cgroup2 mount (controllers not needed)."""
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no writable cgroup2 mount on this host")
    top = os.path.join(mount, f"spanfaas-test-{os.getpid()}-v2")
    d = os.path.join(top, "fn")
    os.makedirs(d)
    pid = -1
    try:
        cg = Cgroup("fn", {"pids": (Hierarchy(2, mount), d)}, [])
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(0)
        cg.attach(pid)
        assert cg.pids() == [pid]
        if not os.path.exists(os.path.join(d, "cgroup.kill")):
            pytest.skip("kernel < 5.14: no cgroup.kill")
        cg.destroy()
        _, status = os.waitpid(pid, 0)
        pid = -1
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert not os.path.exists(d)
    finally:
        if pid > 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if os.path.isdir(d):
            os.rmdir(d)
        os.rmdir(top)


def test_rename_moves_processes_and_limits_or_changes_nothing(cgroup_root: str) -> None:
    cg = Cgroup.create(cgroup_root, "spare-1", memory_bytes=0, cpu=0, pids=0)
    taken = Cgroup.create(cgroup_root, "taken", memory_bytes=0, cpu=0, pids=0)
    pid = os.fork()
    if pid == 0:
        signal.pause()
        os._exit(0)
    try:
        cg.attach(pid)
        assert not Cgroup.rename(cgroup_root, "spare-1", "taken"), "an existing name: refused, nothing moved"
        assert cg.pids() == [pid]
        if any(h.version == 2 for h in hierarchies().values()):
            pytest.skip("cgroup v2 refuses renames; the runtime keeps the spare's name there")
        assert Cgroup.rename(cgroup_root, "spare-1", "fn")
        fn = Cgroup.create(cgroup_root, "fn", memory_bytes=64 * MiB, cpu=0, pids=0)
        assert fn.pids() == [pid], "the process moved with its directory"
        assert cg.pids() == []
        if hierarchies()["memory"].version == 1:
            assert int(_read("memory", cgroup_root, "fn", "memory.limit_in_bytes")) == 64 * MiB
        fn.destroy()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        cg.destroy()
        taken.destroy()
