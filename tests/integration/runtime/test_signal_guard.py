"""Function code cannot signal its template, its reaper or its sibling instances.

With Landlock ABI 6+ each instance's Landlock domain scopes signals; on older
kernels (Ubuntu 22.04/24.04, Debian 12) an instance runs as its template's
uid, and before the seccomp signal guard (``sandbox/seccomp.py``, step 11) a handler
killed its template with ``kill(2, SIGKILL)``, ``kill(-1, SIGKILL)``, tgkill,
rt_sigqueueinfo, a pidfd, or SIGIO sent by F_SETOWN; before the instance's own
guard (step 12) it killed a sibling instance (another call) by its pid.  Each
runtime here runs once with the kernel's ABI, once as on a kernel with ABI 5 and
once as on one without Landlock (``landlock.TEST_ABI_ENV``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from spanfaas.runtime import LocalRuntime
from spanfaas.sandbox.landlock import TEST_ABI_ENV, abi_version
from tests.integration.runtime.conftest import Harness, require, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

ATTACKER = """
import ctypes, fcntl, os, platform, signal, subprocess, threading, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {
    "x86_64": {"tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
    "aarch64": {"tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240},
}[platform.machine()]
KILL = int(signal.SIGKILL)


def syscall(name, *args):
    got = libc.syscall(ctypes.c_long(NR[name]), *args)
    if got < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return got


def siginfo(sig):
    info = (ctypes.c_int * 32)()
    info[0], info[2] = sig, -1  # si_signo; si_code SI_QUEUE (the kernel refuses others' codes)
    info[4], info[5] = os.getpid(), os.getuid()
    return info


def sigio(target):
    r, w = os.pipe()
    fcntl.fcntl(r, fcntl.F_SETOWN, target)
    fcntl.fcntl(r, 10, KILL)  # F_SETSIG
    fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
    os.write(w, b"x")
    time.sleep(0.05)


def pidfd(fd):
    try:
        signal.pidfd_send_signal(fd, KILL)
    finally:
        os.close(fd)


ATTACKS = {
    "kill": lambda t: os.kill(t, KILL),
    "killpg": lambda t: os.killpg(t, KILL),
    "tkill": lambda t: syscall("tkill", t, KILL),
    "tgkill": lambda t: syscall("tgkill", t, t, KILL),
    "sigqueue": lambda t: syscall("rt_sigqueueinfo", t, KILL, ctypes.byref(siginfo(KILL))),
    "tgsigqueue": lambda t: syscall("rt_tgsigqueueinfo", t, t, KILL, ctypes.byref(siginfo(KILL))),
    "pidfd_open": lambda t: pidfd(os.pidfd_open(t)),
    "proc_pidfd": lambda t: pidfd(os.open(f"/proc/{t}", os.O_RDONLY | os.O_DIRECTORY)),
    "sigio": sigio,
    "broadcast": lambda t: os.kill(-1, KILL),
}


def find(comm, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/comm") as f:
                        if f.read().strip() == comm:
                            return int(entry)
                except OSError:
                    continue
        time.sleep(0.01)
    raise LookupError(comm)


def _kill_forked(sig):
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        os.kill(child, sig)
    except OSError as exc:
        return type(exc).__name__  # (the child is in our group: the template ends it with us)
    _, status = os.waitpid(child, 0)
    return -os.WTERMSIG(status)


def _popen(method):
    p = subprocess.Popen(["sleep", "30"])
    try:
        getattr(p, method)()
    except OSError as exc:
        p.returncode = 0  # (as above; no warning that it still runs)
        return type(exc).__name__
    return p.wait()


def own_signals():
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append("usr1"))
    signal.signal(signal.SIGUSR2, lambda *a: got.append("usr2"))
    os.kill(0, signal.SIGUSR1)
    os.killpg(os.getpgrp(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # tgkill(our pid, our thread)
    in_group = subprocess.Popen(["sleep", "30"])  # (exec: SIGUSR2 back to its default, the end)
    os.kill(-os.getpgrp(), signal.SIGUSR2)  # the whole group: it, and us
    return {"handled": got, "group": in_group.wait(), "kill": _popen("kill"), "terminate": _popen("terminate"),
            "forked": _kill_forked(signal.SIGTERM)}


def handler(event, context):
    if event.get("sleep"):
        libc.prctl(15, event["name"].encode(), 0, 0, 0)  # PR_SET_NAME: for the attacker to find
        time.sleep(event["sleep"])
        return "slept"
    if event.get("own"):
        return own_signals()
    if event.get("forked"):
        return _kill_forked(signal.SIGTERM)
    target = event["target"]
    if target == "sibling":
        target = find(event["sibling"])
    elif target == "template":
        target = os.getppid()
    try:
        ATTACKS[event["attack"]](target)
    except OSError as exc:
        return {"blocked": type(exc).__name__, "errno": exc.errno}
    return {"blocked": None}
"""

MANIFEST = """
isolation = "strict"
[resources]
timeout = 10
[scaling]
max = 4
prefork = 1
"""

ATTACKS = ("kill", "killpg", "tkill", "tgkill", "sigqueue", "tgsigqueue", "pidfd_open", "proc_pidfd", "sigio", "broadcast")
BY_PID = ATTACKS[:-1]
_sleepers = itertools.count()


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["kernel", "abi5", "abi0"])
async def guarded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """A sandboxed runtime with the kernel's Landlock, as on a kernel with ABI 5, or as on one
    without Landlock, and the attacker deployed."""
    tmp = tmp_path_factory.mktemp("rt-signals")
    tmp.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        if request.param in ("abi5", "abi0"):
            mp.setenv(TEST_ABI_ENV, request.param[3:])
        elif abi_version() < 6:
            pytest.skip(f"the kernel's Landlock ABI is {abi_version()}: the abi5 run covers it")
        rt = LocalRuntime(runtime_settings(tmp, sandbox=True))
        await rt.start()
        try:
            h = Harness(rt, tmp / "functions")
            require(h, "pid-namespace", "uid", "seccomp")
            await h.deploy("attacker", ATTACKER, MANIFEST)
            await h.deploy("spawner", ATTACKER, "allow_subprocess = true\n" + MANIFEST)
            yield h
        finally:
            await rt.close()


async def _call(h: Harness, event: dict[str, object], function: str = "attacker") -> Any:
    r = await h.invoke(function, json.dumps(event).encode())
    assert r.ok, (event, r.error)
    return json.loads(r.output)


@pytest.mark.parametrize("attack", ATTACKS)
async def test_no_signal_reaches_the_template(guarded: Harness, attack: str) -> None:
    pool = guarded.rt.pool("attacker")
    template = pool.template_pid
    got = await _call(guarded, {"attack": attack, "target": "template"})
    _refused(got)
    assert await _call(guarded, {"sleep": 0.01, "name": "next"}) == "slept"  # (the next call runs as ever)
    assert pool.template_pid == template and pool.state == "ready", "the template survived"


@pytest.mark.parametrize("attack", BY_PID)
async def test_no_signal_reaches_the_reaper(guarded: Harness, attack: str) -> None:
    pool = guarded.rt.pool("attacker")
    template = pool.template_pid
    got = await _call(guarded, {"attack": attack, "target": 1})  # (killpg(1) is kill(-1): all it may signal)
    _refused(got)
    assert await _call(guarded, {"sleep": 0.01, "name": "next"}) == "slept"  # (the next call runs as ever)
    assert pool.template_pid == template and pool.state == "ready", "the reaper and the template survived"


def _refused(got: dict[str, object]) -> None:
    """Without Landlock's signal scope the guard refuses the call (EPERM: the reaper is root's
    anyway); with it the kernel refuses it too, or drops what it would send (kill(-1) counts
    processes it may not signal as no error; SIGIO is not sent)."""
    if abi_version() >= 6:
        assert got["blocked"] in ("PermissionError", None), got
    else:
        assert got["blocked"] == "PermissionError", got


async def _against_a_sibling(h: Harness, attack: str, function: str = "attacker") -> tuple[dict[str, object], object]:
    name = f"sleeper-{next(_sleepers)}"  # (an earlier one may still be in /proc, exiting)
    sleeper = asyncio.ensure_future(h.invoke(function, json.dumps({"sleep": 2, "name": name}).encode()))
    try:
        got = await _call(h, {"attack": attack, "target": "sibling", "sibling": name}, function)
    finally:
        slept = await sleeper
    return got, (json.loads(slept.output) if slept.ok else slept.error)


async def test_kill_minus_one_reaches_no_sibling(guarded: Harness) -> None:
    got, slept = await _against_a_sibling(guarded, "broadcast")
    _refused(got)
    assert slept == "slept", slept


@pytest.mark.parametrize("attack", BY_PID)
async def test_a_sibling_by_its_pid(guarded: Harness, attack: str) -> None:
    """No sibling instance (another call of the same function, the same uid) is reachable by
    its pid: with Landlock's signal scope the kernel refuses it; without it (ABI < 6) the
    instance's own seccomp guard, its pid patched in at its fork, refuses every pid but its
    own (before it, the sibling's call failed as crashed)."""
    got, slept = await _against_a_sibling(guarded, attack)
    _refused(got)
    assert slept == "slept", slept


async def test_an_instance_signals_itself_and_its_group(guarded: Harness) -> None:
    """Itself (``kill(0)``, ``killpg``, its pid, a thread of its own) and its process group,
    which holds what it forks, everywhere; and, a function allowed subprocesses, its children
    by their pid (``Popen.kill``, ``subprocess.run``'s timeout) on every kernel."""
    got = await _call(guarded, {"own": True}, "spawner")
    assert got["handled"] == ["usr1"] * 4 + ["usr2"] and got["group"] == -12, got
    assert (got["kill"], got["terminate"], got["forked"]) == (-9, -15, -15), got


async def test_a_function_without_subprocesses_signals_no_child_by_its_pid_where_seccomp_guards(guarded: Harness) -> None:
    """Without Landlock's signal scope (ABI < 6) no static filter tells a child's pid from a
    sibling's: an instance not allowed subprocesses is refused both (docs/runtime.md, "Signals")."""
    got = await _call(guarded, {"forked": True})
    assert got == (-15 if abi_version() >= 6 else "PermissionError"), got


async def test_a_function_allowed_subprocesses_keeps_its_siblings_reachable_where_seccomp_guards(guarded: Harness) -> None:
    """The trade named in its protection: its children by pid, so its siblings by pid too (ABI < 6)."""
    got, slept = await _against_a_sibling(guarded, "kill", "spawner")
    if abi_version() >= 6:
        _refused(got)
        assert slept == "slept", slept
    else:
        assert got["blocked"] is None, got
        assert not isinstance(slept, str), "the sibling was killed"


async def test_the_protections_say_what_scopes_signals(guarded: Harness) -> None:
    host = next(x for x in guarded.rt.protections if x.name == "signal-scope")
    own = next(x for x in guarded.rt.pool("attacker").protections if x.name == "signal-scope")
    spawner = next(x for x in guarded.rt.pool("spawner").protections if x.name == "signal-scope")
    assert host.active and own.active and spawner.active, (host, own, spawner)
    if abi_version() >= 6:
        assert own.reason.startswith(f"Landlock ABI {abi_version()} scopes signals"), own
        assert spawner == own
    else:
        why = "Landlock ABI 5 cannot scope signals" if abi_version() else "no Landlock to scope signals"
        assert own.reason.startswith(f"seccomp ({why})"), own
        assert "sibling instances" in own.reason and "reachable" not in own.reason, own
        assert "children by their pid" in own.reason, own
        assert spawner.reason.startswith(f"seccomp ({why})"), spawner
        assert "sibling instances stay reachable by their pid" in spawner.reason, spawner
    assert host.reason == own.reason


THREADED = """
import os, signal, threading, time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()  # a thread of the template


def handler(event, context):
    tids = [int(t) for t in os.listdir(f"/proc/{os.getppid()}/task") if int(t) != os.getppid()]
    out = {}
    for tid in tids:
        try:
            os.kill(tid, signal.SIGKILL)  # any thread's tid names its whole process
            out[tid] = None
        except OSError as exc:
            out[tid] = type(exc).__name__
    return out
"""


async def test_a_thread_the_import_started_in_the_template_is_guarded_too(guarded: Harness) -> None:
    await guarded.deploy("threaded", THREADED, "[scaling]\nprefork = 0\n")
    pool = guarded.rt.pool("threaded")
    template = pool.template_pid
    r = await guarded.invoke("threaded")
    assert r.ok, r.error
    got = json.loads(r.output)
    assert got, "the template has a thread besides its main one"
    if abi_version() < 6:
        assert set(got.values()) == {"PermissionError"}, got
    assert (await guarded.invoke("threaded")).ok
    assert pool.template_pid == template and pool.state == "ready", "the template survived"
