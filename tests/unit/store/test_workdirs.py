"""Work directories: a starting process cleans a crash's leftovers, never a
build or unpack in progress, whatever pid namespace its maker runs in."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from spanfaas.store import workdirs

REPO = Path(__file__).resolve().parents[3]
HOLDER = """
import sys
from pathlib import Path
from spanfaas.store import workdirs
w = workdirs.make(Path(sys.argv[1]))
print(w.path, flush=True)
sys.stdin.read()  # hold it until the test closes our stdin (or kills us)
w.close()
"""


def _holder(parent: Path, *prefix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([*prefix, sys.executable, "-c", HOLDER, str(parent)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        for f in (p.stdin, p.stdout):
            if f is not None:
                f.close()


def _started(p: subprocess.Popen[str]) -> Path:
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    assert line, f"the holder did not start (exit {p.wait()})"
    return Path(line)


def _unshare_pid() -> list[str]:
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"no pid namespaces here: {probe.stderr.strip() if probe else 'unshare(1) is missing'}")
    return ["unshare", "--pid", "--fork", "--kill-child"]


def test_close_removes_the_directory_and_its_lock(tmp_path: Path) -> None:
    w = workdirs.make(tmp_path)
    (w.path / "f").write_text("x")
    assert w.path.name.startswith(".tmp-") and oct(w.path.stat().st_mode & 0o777) == "0o755"
    w.close()
    w.close()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_a_directory_renamed_into_place_stays(tmp_path: Path) -> None:
    with workdirs.make(tmp_path) as w:
        (w.path / "f").write_text("x")
        w.path.rename(tmp_path / "final")
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_leftovers_nobody_holds_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-4242-abcd" / "site-packages").mkdir(parents=True)  # before these locks, or a crash
    (tmp_path / ".tmp-gone.lock").write_text("")  # a lock whose directory is gone
    crashed = workdirs.make(tmp_path)
    os.close(crashed._lock_fd)  # its maker died: the kernel dropped the lock
    crashed._lock_fd = -1
    (tmp_path / "keep").mkdir()
    assert workdirs.clean_stale(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]


def test_a_live_makers_directory_is_left_alone_until_it_dies(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    holders.append(p := _holder(tmp_path))
    path = _started(p)
    assert workdirs.clean_stale(tmp_path) == 0
    assert path.is_dir()
    os.killpg(p.pid, signal.SIGKILL)  # a crash: no close()
    p.wait()
    assert path.is_dir()
    assert workdirs.clean_stale(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_maker_in_another_pid_namespace_is_seen_alive(tmp_path: Path, holders: list[subprocess.Popen[str]]) -> None:
    # Its pid means nothing here (the old check, /proc/<pid in the name>, deleted its build).
    holders.append(p := _holder(tmp_path, *_unshare_pid()))
    path = _started(p)
    assert workdirs.clean_stale(tmp_path) == 0
    assert path.is_dir()
    assert p.stdin is not None
    p.stdin.close()  # it finishes: close() removes its directory and lock
    assert p.wait(timeout=10) == 0
    assert list(tmp_path.iterdir()) == []
