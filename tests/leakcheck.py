"""Session-wide leak check: after the whole suite, no process, cgroup or
scratch dir that the tests' runtimes made may be left behind.

Registered from tests/conftest.py; fails the run (exit status 1) with a
list of what leaked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

_STARTED = time.time()
_CLK = os.sysconf("SC_CLK_TCK")


def _boot_time() -> float:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return 0.0


def _process_table() -> dict[int, tuple[int, str, bytes, int]]:
    """pid -> (ppid, cmdline, state, start ticks)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(stat[1]), cmdline, stat[0], int(stat[19]))
    return table


def _our_processes() -> list[str]:
    """Runtime processes (they run ``spanfaas.runtime.zygote``: zygotes,
    templates, instances and what they forked) started during this session
    that are still ours or were orphaned (no live runtime above them)."""
    boot = _boot_time()
    table = _process_table()
    me = os.getpid()
    leaked = []
    for pid, (ppid, cmdline, state, start) in table.items():
        if pid == me or state == b"Z" or "spanfaas.runtime.zygote" not in cmdline:
            continue
        if boot + start / _CLK < _STARTED - 1:
            continue
        owner = None
        p = ppid
        while p in table and p > 1:
            if p == me:
                owner = "this test session"
                break
            if "spanfaas.runtime.zygote" not in table[p][1]:
                owner = "another live process"  # e.g. a gateway someone else runs: its own business
                break
            p = table[p][0]
        if owner == "another live process":
            continue
        leaked.append(f"pid {pid} ({owner or 'orphaned'}): {cmdline.strip()[:100]}")
    return leaked


def _our_cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    if not root.is_dir():
        return []
    mine = f"rt-{os.getpid()}-"
    return [str(d) for ctrl in root.iterdir() if (ctrl / "spanfaas-test").is_dir() for d in (ctrl / "spanfaas-test").iterdir() if d.name.startswith(mine)]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    deadline = time.monotonic() + 5
    while True:  # processes killed at the very end may need a moment to go
        leaks = _our_processes() + _our_cgroups()
        if not leaks or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["leak check: the test suite left these behind:", *(f"  {x}" for x in leaks)]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
