"""How templates fork strict instances: what the function's code may rely on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from tests.integration.runtime.conftest import Harness, require

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


SOCKETS = """
import os

def handler(event, context):
    sockets = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass  # the fd listdir used
    return sockets
"""


async def test_instances_forked_in_one_batch_hold_only_their_own_socket(harness: Harness) -> None:
    """Another instance's socket held open would hide that one's exit from the runtime."""
    await harness.deploy("sockets", SOCKETS, "[scaling]\nmax = 16\nprefork = 0\n")
    results = await asyncio.gather(*(harness.invoke("sockets") for _ in range(32)))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
    assert [json.loads(r.output) for r in results] == [1] * 32


async def test_instances_forked_one_at_a_time_out_of_pids_answer_their_calls(sandboxed: Harness) -> None:
    """Out of pids (the function's pids cgroup) in the middle of a batch of forks, the
    template forks the rest one at a time as instances exit; each of those must close
    only the descriptors still open then (the ones announced before closed theirs)."""
    require(sandboxed, "cgroup-pids")
    await sandboxed.deploy(
        "few-pids", "def handler(event, context):\n    return event\n", "[resources]\npids = 6\n[scaling]\nmax = 32\nprefork = 0\n"
    )
    results = await asyncio.gather(*(sandboxed.invoke("few-pids", b"%d" % i) for i in range(48)))
    assert [r.error for r in results if not r.ok] == []
    assert [json.loads(r.output) for r in results] == list(range(48))


TIMEOUT_AT_IMPORT = """
import socket

socket.setdefaulttimeout(0.05)  # a client library's default, set as the module loads

def handler(event, context):
    return event
"""


async def test_a_default_socket_timeout_set_at_import_does_not_end_waiting_instances(harness: Harness) -> None:
    """Instances forked ahead wait for their call as long as it takes: the module's
    socket.setdefaulttimeout() is for its own sockets, not the platform's."""
    name = "timeout-at-import"
    await harness.deploy(name, TIMEOUT_AT_IMPORT, "[scaling]\nprefork = 2\n")
    r = await harness.invoke(name, b"0")
    assert r.ok, r.error
    await asyncio.sleep(0.3)
    waiting = set(harness.rt.pool(name)._instances)
    await asyncio.sleep(0.5)  # ten times the default timeout
    assert set(harness.rt.pool(name)._instances) == waiting, "instances died waiting and were forked again"
    for i in range(1, 4):
        r = await harness.invoke(name, b"%d" % i)
        assert r.ok, r.error
        assert json.loads(r.output) == i


BOUND = """
import ctypes, os, subprocess

_getenv = ctypes.CDLL(None).getenv
_getenv.restype = ctypes.c_char_p

def _ppid(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])

def handler(event, context):
    zygote = _ppid(os.getppid())  # the instance's parent is its template; the template's, the zygote
    with open(f"/proc/{zygote}/environ", "rb") as f:
        started_with = f.read().split(b"\\0")
    return {
        "zygote_started_bound": b"LD_BIND_NOW=1" in started_with,
        "environ": os.environ.get("LD_BIND_NOW"),
        "libc": _getenv(b"LD_BIND_NOW"),
        "shell": subprocess.run(["/bin/sh", "-c", 'echo "${LD_BIND_NOW-unset}"'], capture_output=True, text=True).stdout.strip(),
    }
"""


async def test_the_zygote_binds_symbols_at_start_and_functions_never_see_the_variable(harness: Harness) -> None:
    """Lazily bound, every libc or interpreter symbol an instance calls first (setpgid, putenv,
    sched_yield) was resolved again in each strict instance, writing its pages: the zygote is
    started with LD_BIND_NOW=1, and drops it at once, out of the functions' environment."""
    await harness.deploy("bound", BOUND)
    r = await harness.invoke("bound")
    assert r.ok, r.error
    assert json.loads(r.output) == {"zygote_started_bound": True, "environ": None, "libc": None, "shell": "unset"}


SIGNALS = """
import signal, subprocess

def handler(event, context):
    return {
        "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "child": subprocess.run(["/bin/true"]).returncode,
    }
"""


async def test_an_instance_has_sigchld_as_a_fresh_process_has_it_and_the_template_reaps_on(harness: Harness) -> None:
    """The template resets SIGCHLD (default action, no wake-up fd) once around a batch of forks,
    not in each instance: instances see it reset, and the template, its own restored, still
    reaps every instance (those that exited while it forked too)."""
    await harness.deploy("signals", SIGNALS, "[scaling]\nmax = 8\nprefork = 4\n")
    for _ in range(3):
        results = await asyncio.gather(*(harness.invoke("signals") for _ in range(24)))
        assert [json.loads(r.output) for r in results if r.ok] == [{"sigchld_default": True, "wakeup_fd": -1, "child": 0}] * 24
    pool = harness.rt.pool("signals")
    await asyncio.wait_for(_until(lambda: pool.stats()["busy"] == 0 and pool.stats()["idle"] >= 4), 10)


async def _until(cond: Callable[[], bool]) -> None:
    while not cond():
        await asyncio.sleep(0.01)
