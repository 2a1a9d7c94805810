"""Sandbox probes at what only root, or the template's own process, may do; and at an
instance that stops itself or cuts its own line to the runtime.

Each was blocked or contained when written (a regression guard): the uid drop
(no capabilities), seccomp's deny-list, Landlock, the template's not being
dumpable (its ``/proc`` files are root's), the timeout's SIGKILL.
"""

from __future__ import annotations

import json
import platform

import pytest

from tests.integration.runtime.conftest import Harness, require

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRIVILEGED = """
import ctypes, errno, os, resource, socket, time

libc = ctypes.CDLL(None, use_errno=True)

def syscall(nr, *args):
    if libc.syscall(nr, *args) < 0:
        return errno.errorcode[ctypes.get_errno()]
    return "done"

def attempt(fn):
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    except ValueError as exc:  # setrlimit above the hard limit
        return "ValueError"
    return "done"

def read(path):
    with open(path, "rb") as f:
        f.read(1)

def write(path, data):
    with open(path, "w") as f:
        f.write(data)

CALLS = {
    "clock_settime": lambda: time.clock_settime(time.CLOCK_REALTIME, time.time()),
    "sethostname": lambda: socket.sethostname("elsewhere"),
    "chroot": lambda: os.chroot("/"),
    "mknod a char device": lambda: os.mknod("null", 0o20666, os.makedev(1, 3)),
    "setrlimit above the hard limit": lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, 1 << 20)),
}

def raw():  # x86_64 numbers
    return {
        "acct": syscall(163, None),
        "swapon": syscall(167, b"/dev/null", 0),
        "reboot": syscall(169, 0xFEE1DEAD, 672274793, 0x4321FEDC, None),
        "kexec_load": syscall(246, 0, 0, None, 0),
        "init_module": syscall(175, None, 0, b""),
        "syslog": syscall(103, 3, ctypes.create_string_buffer(64), 64),
        "open_by_handle_at": syscall(304, -100, ctypes.create_string_buffer(136), 0),
        "keyctl": syscall(250, 0, 0),
        "userfaultfd": syscall(323, 0),
        "fanotify_init": syscall(300, 0, 0),
    }

def of_others():
    out = {}
    for who, pid in (("reaper", 1), ("template", os.getppid())):
        for f in ("environ", "maps", "mem", "fd/0", "syscall", "stack"):
            out[f"{who} {f}"] = attempt(lambda: read(f"/proc/{pid}/{f}"))
        for f, value in (("oom_score_adj", "1000"), ("autogroup", "19"), ("comm", "evil"), ("timerslack_ns", "1")):
            out[f"{who} {f}"] = attempt(lambda: write(f"/proc/{pid}/{f}", value))
    return out

def cgroups():  # its own cgroup's limits raised, itself moved to the root cgroup (out of every limit)
    out = {}
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\\n").split(":", 2) for line in f]
    for _, ctrl, path in lines:
        if ctrl in ("memory", "pids", "cpu,cpuacct", "cpu", ""):
            base = f"/sys/fs/cgroup/{ctrl.split(',')[0]}" if ctrl else "/sys/fs/cgroup"
            for name, value in (("memory.limit_in_bytes", "-1"), ("memory.max", "max"), ("pids.max", "max"),
                                ("cpu.cfs_quota_us", "-1"), ("cpu.max", "max")):
                out[f"{ctrl or 'v2'} {name}"] = attempt(lambda: write(f"{base}{path}/{name}", value))
            out[f"{ctrl or 'v2'} to the root"] = attempt(lambda: write(f"{base}/cgroup.procs", str(os.getpid())))
    return out

def handler(event, context):
    if event == "cgroups":
        return cgroups()
    if event == "calls":
        return {name: attempt(call) for name, call in CALLS.items()}
    if event == "raw":
        return raw()
    return of_others()
"""


async def test_what_only_root_may_do_is_refused(sandboxed: Harness) -> None:
    require(sandboxed, "uid")
    await sandboxed.deploy("privileged", PRIVILEGED)
    r = await sandboxed.invoke("privileged", b'"calls"')
    assert r.ok, r.error
    assert json.loads(r.output) == {
        "clock_settime": "EPERM", "sethostname": "EPERM", "chroot": "EPERM", "mknod a char device": "EPERM",
        "setrlimit above the hard limit": "ValueError",
    }  # fmt: skip


async def test_the_calls_that_reach_the_kernels_or_the_hosts_state_are_refused(sandboxed: Harness) -> None:
    require(sandboxed, "uid", "seccomp")
    if platform.machine() != "x86_64":
        pytest.skip(f"the probe's syscall numbers are x86_64's, not {platform.machine()}'s")
    if "privileged" not in sandboxed.rt.functions():
        await sandboxed.deploy("privileged", PRIVILEGED)
    r = await sandboxed.invoke("privileged", b'"raw"')
    assert r.ok, r.error
    got = json.loads(r.output)
    assert got == dict.fromkeys(got, "EPERM"), got  # (denied by seccomp, or for want of a capability)


async def test_the_templates_and_reapers_proc_files_are_out_of_reach(sandboxed: Harness) -> None:
    """An instance runs as its template's uid: reading its template's memory, environment
    or descriptors, or raising its OOM score or nice value through /proc, would reach
    every later call.  The template is not dumpable (its /proc files are root's) and
    outside the instance's Landlock domain."""
    require(sandboxed, "uid", "pid-namespace")
    if "privileged" not in sandboxed.rt.functions():
        await sandboxed.deploy("privileged", PRIVILEGED)
    r = await sandboxed.invoke("privileged", b'"others"')
    assert r.ok, r.error
    got = json.loads(r.output)
    reads = {k: v for k, v in got.items() if k.split()[1] in ("environ", "maps", "mem", "fd/0", "syscall", "stack")}
    assert reads == dict.fromkeys(reads, "EACCES"), got
    writes = {k: v for k, v in got.items() if k not in reads}
    assert len(writes) == 8 and all(v in ("EACCES", "EROFS") for v in writes.values()), got  # root's, or a read-only /proc


STOPS = """
import os, signal

def handler(event, context):
    if event == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif event == "stop-group":
        os.killpg(0, signal.SIGSTOP)
    elif event == "cut":  # its line to the runtime, and its log capture
        for fd in os.listdir("/proc/self/fd"):
            if int(fd) > 2:
                try:
                    os.close(int(fd))
                except OSError:
                    pass
    elif event == "blind":  # the same, pointed at /dev/null instead
        null = os.open("/dev/null", os.O_RDWR)
        for fd in os.listdir("/proc/self/fd"):
            if int(fd) > 2 and int(fd) != null:
                try:
                    os.dup2(null, int(fd))
                except OSError:
                    pass
    return os.getpid()
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_an_instance_that_stops_itself_or_cuts_its_line_costs_only_its_call(sandboxed: Harness, isolation: str) -> None:
    """SIGSTOP to itself (or its group) ends as a timeout (the timeout's SIGKILL reaches a
    stopped process); closing or overwriting the runtime's socket and its log capture, as a
    crash; the template survives and the next call is answered."""
    name = f"stops-{isolation}"
    await sandboxed.deploy(name, STOPS, f'isolation = "{isolation}"\n[resources]\ntimeout = 2\n[scaling]\nmax = 1\nprefork = 0\n')
    template = sandboxed.rt.pool(name).template_pid
    for event, kind in (("stop", "timeout"), ("stop-group", "timeout"), ("cut", "crashed"), ("blind", "crashed")):
        r = await sandboxed.invoke(name, json.dumps(event).encode())
        assert r.error is not None and r.error.kind == kind, (event, r.output, r.error)
        r = await sandboxed.invoke(name, b'"again"')
        assert r.ok, (event, r.error)
    assert sandboxed.rt.pool(name).template_pid == template and sandboxed.rt.pool(name).state == "ready"


async def test_its_cgroups_limits_and_membership_are_out_of_reach(sandboxed: Harness) -> None:
    """Raising its own memory, pids or CPU limit, or moving itself to the root cgroup:
    /sys is read-only in its namespace, the files are root's, and Landlock keeps it out."""
    require(sandboxed, "uid", "mount-namespace")
    if "privileged" not in sandboxed.rt.functions():
        await sandboxed.deploy("privileged", PRIVILEGED)
    r = await sandboxed.invoke("privileged", b'"cgroups"')
    assert r.ok, r.error
    got = json.loads(r.output)
    assert got and all(v in ("EACCES", "EROFS", "ENOENT") for v in got.values()), got
    assert any(k.endswith("to the root") and v in ("EACCES", "EROFS") for k, v in got.items()), got
