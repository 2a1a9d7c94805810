"""Forker: libc's fork() without the at-fork hooks only while every hook is known.

Each case runs in a fresh interpreter: ``watch()`` wraps ``os.register_at_fork``
for the rest of the process, and the hooks it vets are the process's own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CASE = """
import json, os, sys
from spanfaas.runtime.forking import Forker

forker = Forker()
forker.watch()
{setup}
r, w = os.pipe()
pid = forker.fork()
if pid == 0:
    os.write(w, json.dumps({{"hook_ran": HOOK_RAN[0] if "HOOK_RAN" in globals() else None}}).encode())
    os._exit(0)
_, status = os.waitpid(pid, 0)
os.close(w)
child = json.loads(os.read(r, 4096))
print(json.dumps({{"lean": forker.lean, "why": forker.why_not_lean(), "status": status, **child}}))
"""


def run_case(setup: str, *, before: str = "") -> dict[str, object]:
    code = textwrap.dedent(before) + CASE.format(setup=textwrap.dedent(setup))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_template_of_stdlib_and_platform_modules_forks_without_the_hooks() -> None:
    got = run_case("import logging, random, threading, json")  # (random registers its hook now)
    assert got == {"lean": True, "why": "", "status": 0, "hook_ran": None}


def test_a_hook_registered_after_watching_gets_os_fork_and_runs() -> None:
    got = run_case(
        """
        HOOK_RAN = [False]
        def hook():
            HOOK_RAN[0] = True
        os.register_at_fork(after_in_child=hook)
        """
    )
    assert got["lean"] is False
    assert got["hook_ran"] is True, "os.fork() ran the function's hook in the child"
    assert "hook" in str(got["why"])


def test_a_thread_started_at_import_gets_os_fork() -> None:
    got = run_case(
        """
        import threading, time
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        """
    )
    assert got["lean"] is False
    assert "threads" in str(got["why"])


def test_a_non_stdlib_module_imported_before_watching_gets_os_fork() -> None:
    got = run_case("", before="import pytest\n")
    assert got["lean"] is False
    assert "pytest" in str(got["why"]) or "_pytest" in str(got["why"])


@pytest.mark.parametrize("lean", [True, False])
def test_fork_failure_raises_oserror_like_os_fork(lean: bool) -> None:
    code = textwrap.dedent(
        f"""
        import os, resource
        from spanfaas.runtime.forking import Forker
        forker = Forker()
        forker.watch()
        if not {lean}:
            os.register_at_fork(after_in_child=lambda: None)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        try:
            pid = forker.fork()
        except BlockingIOError:
            print("BlockingIOError", forker.lean)
        else:
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            print("forked", forker.lean)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # root ignores RLIMIT_NPROC: then the fork simply works
    assert out.stdout.split() in (["BlockingIOError", str(lean)], ["forked", str(lean)])


def test_the_stdlib_hooks_registered_after_watching_are_vetted() -> None:
    got = run_case("import concurrent.futures.thread")
    assert got["lean"] is True, got["why"]


def test_a_forked_child_decides_again_for_its_own_forks() -> None:
    # The zygote's forker is inherited by its templates: a template whose function
    # started a thread must not fork its instances without the hooks.
    code = textwrap.dedent(
        """
        import json, os, threading
        from spanfaas.runtime.forking import forker
        forker.watch()
        r, w = os.pipe()
        pid = forker.fork()  # the zygote forks a template
        if pid == 0:
            stop = threading.Event()
            t = threading.Thread(target=stop.wait)
            t.start()
            grandchild = forker.fork()  # the template forks an instance
            if grandchild == 0:
                os._exit(0)
            os.waitpid(grandchild, 0)
            os.write(w, json.dumps({"lean": forker.lean, "why": forker.why_not_lean()}).encode())
            stop.set()
            t.join()
            os._exit(0)
        os.waitpid(pid, 0)
        os.close(w)
        print(json.dumps({"zygote_lean": forker.lean, "template": json.loads(os.read(r, 4096))}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    got = json.loads(out.stdout)
    assert got["zygote_lean"] is True
    assert got["template"]["lean"] is False and "threads" in got["template"]["why"]


def test_the_platforms_fork_guard_is_vetted_and_does_not_run_in_a_lean_child() -> None:
    """instance.guard_forks(), registered by every template before its first
    instance, keeps the template forking with libc's fork()."""
    got = run_case("from spanfaas.runtime import instance\ninstance.guard_forks(os.getpid())")
    assert got == {"lean": True, "why": "", "status": 0, "hook_ran": None}


BARE = """
import os, resource
from spanfaas.runtime.forking import Forker
forker = Forker()
forker.watch()
if not {lean}:
    os.register_at_fork(after_in_child=lambda: None)
fork = forker.bare()
print("os.fork" if fork is os.fork else "libc")
pid = fork()
if pid == 0:
    os._exit(0)
print("forked", pid > 0, os.waitpid(pid, 0)[1])
if os.getuid() == 0:  # root ignores RLIMIT_NPROC: a uid of its own, that has no processes
    os.setgid(65534)
    os.setuid(65534)
resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
try:
    print("failed", fork())
except BlockingIOError:
    print("failed", "BlockingIOError")
try:
    forker.fork()
except BlockingIOError:
    print("why", "BlockingIOError")
"""


@pytest.mark.parametrize("lean", [True, False])
def test_the_bare_fork_of_a_batch_is_libcs_while_lean_and_fork_says_why_it_failed(lean: bool) -> None:
    """``bare()``: a template's loop of forks calls libc's fork() with no wrapper (-1 on
    failure; ``fork()`` then raises what os.fork() would), or os.fork() when not lean."""
    out = subprocess.run([sys.executable, "-c", BARE.format(lean=lean)], capture_output=True, text=True, timeout=60, check=True)
    lines = [line.split() for line in out.stdout.splitlines()]
    assert lines[0] == (["libc"] if lean else ["os.fork"])
    assert lines[1] == ["forked", "True", "0"]
    assert lines[2] == (["failed", "-1"] if lean else ["failed", "BlockingIOError"])
    assert lines[3] == ["why", "BlockingIOError"]
