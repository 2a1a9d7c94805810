"""forking.fork: a plain fork only while that is safe, os.fork's callbacks otherwise.

Each case runs in a fresh interpreter: ``watch_registrations`` replaces
``os.register_at_fork`` process-wide, which must not leak into pytest.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import os, sys, threading, types
from spanfaas.runtime import forking
forking.watch_registrations()

def child_ran_callbacks() -> bool:
    r, w = os.pipe()
    pid = forking.fork()
    if pid == 0:
        os.write(w, b"1" if ran else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    return os.read(r, 1) == b"1"

ran = False
def mark():
    global ran
    ran = True
"""


def run(body: str) -> str:
    code = PRELUDE + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_plain_fork_skips_the_lock_only_callbacks() -> None:
    # Registered as if by the threading module: a lock-only callback, skipped.
    out = run(
        """
        exec("import os\\nos.register_at_fork(after_in_child=mark)", {"__name__": "threading", "mark": mark})
        print(forking.plain_fork_possible(), child_ran_callbacks())
        """
    )
    assert out == "True False"


def test_a_library_callback_makes_it_os_fork() -> None:
    out = run(
        """
        exec("import os\\nos.register_at_fork(after_in_child=mark)", {"__name__": "somelib.pool", "mark": mark})
        print(forking.plain_fork_possible(), child_ran_callbacks())
        """
    )
    assert out == "False True"


def test_a_second_thread_makes_it_os_fork() -> None:
    out = run(
        """
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            print(forking.plain_fork_possible())
        finally:
            stop.set()
            t.join()
        print(forking.plain_fork_possible())
        """
    )
    assert out.split() == ["False", "True"]


def test_fork_returns_the_child_pid_and_zero_in_the_child() -> None:
    out = run(
        """
        r, w = os.pipe()
        pid = forking.fork()
        if pid == 0:
            os.write(w, str(os.getpid()).encode())
            os._exit(7)
        got, status = os.waitpid(pid, 0)
        print(got == pid == int(os.read(r, 32)), os.waitstatus_to_exitcode(status))
        """
    )
    assert out == "True 7"
