"""Session-wide leak check: after the whole suite, no process, cgroup or
mount that the tests' runtimes made may be left behind.

Registered from tests/conftest.py; fails the run (exit status 1) with a
list of what leaked.

Mounts: one in ``/proc/self/mountinfo`` at the end that was not there at the
start is a leak when it is under the session's tmp dir (pytest's basetemp), or
is a runtime's scratch tmpfs (``<data dir>/scratch/rt-<pid>-<n>``, mounted by a
runtime without the sandbox) of this session's process or of a process it
started (a gateway), as seen alive at the end of some test.  Other helpers' and
users' mounts are theirs: a mount under a ``tempfile.mkdtemp`` dir outside the
basetemp, or the scratch tmpfs of a gateway started and killed within one test,
cannot be told from theirs and is not checked (such a test sweeps its own:
``spanfaas.runtime.scratch.remove_stale``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

_STARTED = time.time()
_CLK = os.sysconf("SC_CLK_TCK")
_SCRATCH_ROOT = re.compile(r"/scratch/rt-(\d+)-\d+$")


def _unescape(field: str) -> str:
    """A mountinfo path field: space, tab, newline and backslash are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _mounts() -> dict[tuple[str, str], str]:
    """(mount id, mount point) -> file system type, from /proc/self/mountinfo."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        out[(fields[0], _unescape(fields[4]))] = fields[fields.index("-") + 1]
    return out


_MOUNTS_AT_START = _mounts()
_OUR_RUNTIMES = {os.getpid()}
"""Pids whose scratch tmpfs is this session's: itself, and the processes it started (seen alive)."""
_basetemp: Path | None = None


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


def _descends_from_us(pid: int) -> bool:
    me = os.getpid()
    for _ in range(64):
        if pid == me:
            return True
        if pid <= 1:
            return False
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _note_our_runtimes() -> None:
    """The runtimes whose scratch tmpfs is mounted now and that are this session's (alive now)."""
    for _id, point in _mounts():
        m = _SCRATCH_ROOT.search(point)
        if m is not None and int(m[1]) not in _OUR_RUNTIMES and _descends_from_us(int(m[1])):
            _OUR_RUNTIMES.add(int(m[1]))


def _our_mounts() -> list[str]:
    leaked = []
    for key, fstype in _mounts().items():
        if key in _MOUNTS_AT_START:
            continue
        point = key[1]
        m = _SCRATCH_ROOT.search(point)
        if m is not None and int(m[1]) in _OUR_RUNTIMES:
            leaked.append(f"mount {point} ({fstype}): the scratch root of runtime pid {m[1]}, still mounted")
        elif _basetemp is not None and Path(point).is_relative_to(_basetemp):
            leaked.append(f"mount {point} ({fstype}): under the session's tmp dir, still mounted")
    return leaked


@pytest.fixture(scope="session", autouse=True)
def _session_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where the session's tmp dirs are (mounts under it are checked)."""
    global _basetemp
    _basetemp = tmp_path_factory.getbasetemp().resolve()


@pytest.hookimpl(trylast=True)
def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        _note_our_runtimes()


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
    leaks += _our_mounts()  # (once the processes went: a runtime unmounts before it exits)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["leak check: the test suite left these behind:", *(f"  {x}" for x in leaks)]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
