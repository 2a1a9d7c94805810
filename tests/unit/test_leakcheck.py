"""The session-wide leak check (tests/leakcheck.py) on sessions of its own: a
pytest run in a subprocess whose one test leaves a mount behind (or does not)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MNT_DETACH = 2

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

LEAKY = '''
import os, subprocess, sys
from pathlib import Path
from spanfaas.sandbox import _libc

def mount(d):
    d.mkdir(parents=True, exist_ok=True)
    _libc.mount("tmpfs", str(d), "tmpfs", 0, "size=64k")
    with open(os.environ["LEAK_NOTE"], "a") as f:
        f.write(str(d) + "\\n")

def test_it(tmp_path):
    {body}
'''


def session(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run one test with ``body`` under the leak check; unmount what it mounted afterwards."""
    test = tmp_path / "leaky" / "test_leaky.py"
    test.parent.mkdir()
    test.write_text(LEAKY.format(body=textwrap.indent(textwrap.dedent(body), "    ").strip()))
    note = tmp_path / "mounted"
    note.touch()
    env = {**os.environ, "LEAK_NOTE": str(note), "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.leakcheck", "--rootdir", str(test.parent),
             "--basetemp", str(tmp_path / "basetemp"), str(test)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        mounted = note.read_text().split()
        for d in mounted:
            ctypes.CDLL(None, use_errno=True).umount2(d.encode(), MNT_DETACH)
    return run, mounted


def test_a_scratch_tmpfs_of_a_runtime_of_the_session_left_mounted_fails_the_run(tmp_path: Path) -> None:
    # Its runtime ran in the session's process (rt-<pid>-<n>), outside the session's tmp dir.
    outside = tmp_path / "elsewhere"
    run, mounted = session(tmp_path, f'mount(Path("{outside}") / "data" / "scratch" / f"rt-{{os.getpid()}}-1")')
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "leak check" in run.stdout and f"mount {mounted[0]} (tmpfs)" in run.stdout, run.stdout


def test_a_scratch_tmpfs_of_a_gateway_the_session_started_left_mounted_fails_the_run(tmp_path: Path) -> None:
    # A child's runtime (a gateway the test started), seen alive at the test's end, gone at the session's.
    outside = tmp_path / "elsewhere"
    body = f'''
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        mount(Path("{outside}") / "data" / "scratch" / f"rt-{{child.pid}}-1")
        import atexit; atexit.register(child.kill)
    '''
    run, mounted = session(tmp_path, body)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"mount {mounted[0]} (tmpfs)" in run.stdout, run.stdout


def test_any_mount_under_the_session_tmp_dir_left_fails_the_run(tmp_path: Path) -> None:
    run, mounted = session(tmp_path, 'mount(tmp_path / "volume")')
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"mount {mounted[0]} (tmpfs)" in run.stdout, run.stdout


def test_mounts_that_are_not_the_session_s_or_are_gone_pass(tmp_path: Path) -> None:
    # A scratch root of a runtime of another live process (pid 1: not this session's), and
    # one of the session's unmounted before the end: no leak.
    outside = tmp_path / "elsewhere"
    body = f'''
        mount(Path("{outside}") / "scratch" / "rt-1-1")
        mine = tmp_path / "data" / "scratch" / f"rt-{{os.getpid()}}-1"
        mount(mine)
        _libc.umount2(str(mine), 2)
    '''
    run, _ = session(tmp_path, body)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "leak check" not in run.stdout
