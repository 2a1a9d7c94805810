"""Sandbox probes at what a function shares with the host and with the calls before it.

Namespaces split pids, mounts, IPC, hostname and network; some kernel objects
are not theirs (kernel uevents reach every network namespace of the host), and
some live in the function's namespaces, past the call that made them (POSIX
message queues in its IPC namespace, files in its ``/dev/shm``).  Landlock
keeps a function off the latter, but not every kernel has Landlock: those
probes also run as on a kernel without it (``landlock.TEST_ABI_ENV`` 0).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from spanfaas.model import ErrorInfo
from spanfaas.runtime import LocalRuntime
from spanfaas.sandbox.landlock import TEST_ABI_ENV
from tests.integration.runtime.conftest import Harness, require, runtime_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

UEVENT = """
import socket

NETLINK_KOBJECT_UEVENT = 15

def handler(event, context):
    names = [name for _, name in socket.if_nameindex()]  # NETLINK_ROUTE: its own network's, allowed
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    with s:
        s.bind((0, 1))
        s.settimeout(event)
        try:
            return {"interfaces": names, "heard": s.recv(4096).split(b"\\0")[0].decode()}
        except TimeoutError:
            return {"interfaces": names, "heard": None}
"""

A_DEVICE_EVENT = "/sys/devices/virtual/mem/null/uevent"
"""Writing ``change`` here makes the kernel send a uevent for /dev/null (udev re-applies its mode: no change)."""


async def _while_listening(h: Harness, name: str) -> tuple[dict[str, object] | None, ErrorInfo | None]:
    """Call ``name``, and send a host device event while it listens."""
    call = asyncio.ensure_future(h.invoke(name, b"4"))
    await asyncio.sleep(1.5)
    with open(A_DEVICE_EVENT, "w") as f:
        f.write("change")
    r = await call
    return (json.loads(r.output) if r.ok else None), r.error


async def test_a_function_without_network_hears_no_host_device_events(sandboxed: Harness) -> None:
    """With network = "none" a function bound a NETLINK_KOBJECT_UEVENT socket and heard the
    host's kernel uevents (devices added, removed, changed: "change@/devices/virtual/mem/null"):
    the kernel sends them to every network namespace the host's user namespace owns."""
    require(sandboxed, "net-namespace", "seccomp")
    if os.geteuid() != 0 or not os.access(A_DEVICE_EVENT, os.W_OK):
        pytest.skip(f"cannot send a device event on this host (writing {A_DEVICE_EVENT} needs root)")
    await sandboxed.deploy("uevent-none", UEVENT, "[resources]\ntimeout = 10\n")
    got, error = await _while_listening(sandboxed, "uevent-none")
    assert got is None and error is not None, got
    assert error.type == "PermissionError" and 'set network = "host"' in error.message, error
    await sandboxed.deploy("uevent-host", UEVENT, 'network = "host"\n[resources]\ntimeout = 10\n')
    got, error = await _while_listening(sandboxed, "uevent-host")
    assert got is not None and got["heard"] == "change@/devices/virtual/mem/null", (got, error)


ROUTE = """
import socket

def handler(event, context):
    return [name for _, name in socket.if_nameindex()]
"""


async def test_a_function_without_network_still_lists_its_interfaces(sandboxed: Harness) -> None:
    """NETLINK_ROUTE answers about the function's own network namespace (getaddrinfo's
    AI_ADDRCONFIG, if_nameindex, psutil): it stays allowed."""
    require(sandboxed, "net-namespace", "seccomp")
    await sandboxed.deploy("route-none", ROUTE)
    r = await sandboxed.invoke("route-none")
    assert r.ok and json.loads(r.output) == ["lo"], (r.output, r.error)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def no_landlock(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    """A sandboxed runtime as on a kernel without Landlock: namespaces, uid, seccomp, cgroups only."""
    tmp = tmp_path_factory.mktemp("rt-no-landlock")
    tmp.chmod(0o755)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TEST_ABI_ENV, "0")
        rt = LocalRuntime(runtime_settings(tmp, sandbox=True))
        await rt.start()
        try:
            yield Harness(rt, tmp / "functions")
        finally:
            await rt.close()


MQUEUE = """
import ctypes, errno, os

rt = ctypes.CDLL("librt.so.1", use_errno=True)
rt.mq_receive.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]

def handler(event, context):
    if event == "leave":  # what a call leaves behind it in its IPC namespace, past its end
        q = rt.mq_open(b"/left", os.O_CREAT | os.O_WRONLY, 0o600, None)
        if q < 0:
            return {"made": False, "errno": errno.errorcode[ctypes.get_errno()]}
        return {"made": rt.mq_send(q, b"call-1-secret", 13, 0) == 0}
    q = rt.mq_open(b"/left", os.O_RDONLY | os.O_NONBLOCK)
    if q < 0:
        return {"seen": None}
    buf = ctypes.create_string_buffer(8192)
    n = rt.mq_receive(q, buf, 8192, None)
    return {"seen": buf.raw[:n].decode() if n >= 0 else ""}
"""

STRICT = 'isolation = "strict"\n'


@pytest.mark.parametrize("landlock", ["kernel", "none"])
async def test_a_posix_message_queue_left_by_a_strict_call_is_not_seen_by_the_next(
    sandboxed: Harness, no_landlock: Harness, landlock: str
) -> None:
    """A POSIX message queue is its IPC namespace's, the template's: where no Landlock kept
    the function off the queues' file system, a strict call's queue outlived it, and the
    next call read what it sent (SysV IPC was closed to it the same way before)."""
    h = sandboxed if landlock == "kernel" else no_landlock
    require(h, "ipc-namespace", "uid")
    name = f"mqueue-{landlock}"
    await h.deploy(name, MQUEUE, STRICT)
    left = await h.invoke(name, b'"leave"')
    assert left.ok, left.error
    seen = await h.invoke(name, b'"look"')
    assert seen.ok and json.loads(seen.output) == {"seen": None}, (left.output, seen.output, seen.error)


DEV_SHM = """
import os

def handler(event, context):
    if event == "leave":
        try:
            with open("/dev/shm/left", "w") as f:
                f.write("call-1-secret")
        except OSError as exc:
            return {"made": False, "error": type(exc).__name__}
        return {"made": True}
    try:
        with open("/dev/shm/left") as f:
            return {"seen": f.read()}
    except OSError as exc:
        return {"seen": None, "error": type(exc).__name__}
"""


@pytest.mark.parametrize("landlock", ["kernel", "none"])
async def test_a_file_left_in_dev_shm_by_a_strict_call_is_not_seen_by_the_next(
    sandboxed: Harness, no_landlock: Harness, landlock: str
) -> None:
    """The fs view's staging tmpfs on /dev/shm (mode 1777, the function's own) stayed
    writable: where no Landlock kept the function off it, a strict call's file there
    outlived it and the next call read it."""
    h = sandboxed if landlock == "kernel" else no_landlock
    require(h, "mount-namespace", "uid")
    name = f"devshm-{landlock}"
    await h.deploy(name, DEV_SHM, STRICT)
    left = await h.invoke(name, b'"leave"')
    assert left.ok, left.error
    seen = await h.invoke(name, b'"look"')
    assert seen.ok and json.loads(seen.output)["seen"] is None, (left.output, seen.output, seen.error)


HOST_DIR = """
import os

def handler(event, context):
    try:
        with open(os.path.join(event, "from-a-function"), "w") as f:
            f.write("x")
    except OSError as exc:
        return exc.errno
    return 0
"""


@pytest.fixture
def world_writable() -> Iterator[str]:
    """A dir of the host anyone may write in, as ``/tmp`` (sticky), ``/run/lock``, ``/var/crash``."""
    d = tempfile.mkdtemp(prefix="spanfaas-world-writable-")
    os.chmod(d, 0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("landlock", ["kernel", "none"])
async def test_a_function_writes_nothing_of_the_host_but_its_scratch(
    sandboxed: Harness, no_landlock: Harness, world_writable: str, landlock: str
) -> None:
    """A function's uid may write what anyone may of the host: where no Landlock kept it
    out, it wrote the host's /tmp (on its disk, past its memory limit; a channel to other
    functions; a symlink in the way of a host service).  Its mounts are read-only but its scratch."""
    h = sandboxed if landlock == "kernel" else no_landlock
    require(h, "mount-namespace", "uid")
    name = f"host-dir-{landlock}"
    await h.deploy(name, HOST_DIR)
    r = await h.invoke(name, json.dumps(world_writable).encode())
    assert r.ok and json.loads(r.output) in (errno.EROFS, errno.EACCES), (r.output, r.error)
    assert os.listdir(world_writable) == []
    r = await h.invoke(name, b'"."')
    assert r.ok and json.loads(r.output) == 0, (r.output, r.error)  # its scratch dir
    protections = {x.name: x for x in h.rt.pool(name).protections}
    assert protections["read-only-mounts"].active, protections["read-only-mounts"]


FILL_SCRATCH = """
import os

def handler(event, context):
    if event == "fill":  # a GiB into its scratch tmpfs: ENOSPC at its cap, or the memory limit first
        with open("big", "wb") as f:
            for _ in range(1024):
                f.write(b"x" * (1 << 20))
    return sorted(os.listdir("."))
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_a_call_that_fills_its_scratch_is_stopped_and_the_next_starts_empty(sandboxed: Harness, isolation: str) -> None:
    """The scratch tmpfs is capped and its pages are the function's memory: a call that
    writes a GiB there fails (out of space, or of memory), and the next call finds it empty."""
    require(sandboxed, "cgroup-memory", "mount-namespace")
    name = f"fill-scratch-{isolation}"
    await sandboxed.deploy(name, FILL_SCRATCH, f'isolation = "{isolation}"\n[resources]\nmemory = 32\ntimeout = 30\n[scaling]\nmax = 1\nprefork = 0\n')
    template = sandboxed.rt.pool(name).template_pid
    r = await sandboxed.invoke(name, b'"fill"')
    assert r.error is not None and (r.error.kind == "oom" or "No space left" in r.error.message), (r.output, r.error)
    r = await sandboxed.invoke(name, b'"look"')
    assert r.ok and json.loads(r.output) == [], (r.output, r.error)
    assert sandboxed.rt.pool(name).template_pid == template


SCRATCH_LEFT = """
import os

FORGED = "i999999-000000000000"  # named as the template names an instance's dir


def leave(root, here):
    made = []
    try:
        os.chmod(root, 0o700)  # (the root is ours: the same uid as the template)
    except OSError:
        pass
    targets = [os.path.join(root, "left"), os.path.join(root, FORGED, "left"), os.path.join(here, "..", "dotdot")]
    try:
        targets += [os.path.join(root, d, "left") for d in os.listdir(root) if d != os.path.basename(here)]
    except OSError:
        pass  # (Landlock: the root is not the instance's to read)
    for path in targets:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("call-1-secret")
            made.append(path)
        except OSError:
            continue
    return made


def look(root, here):
    seen = sorted(os.listdir(here))  # its own dir: a fresh, empty one
    for path in [os.path.join(root, "left"), os.path.join(root, FORGED, "left"), os.path.join(root, "dotdot")]:
        try:
            with open(path) as f:
                seen.append(path + ":" + f.read())
        except OSError:
            pass
    try:
        os.chmod(root, 0o700)
        for dirpath, _, files in os.walk(root):
            seen += [os.path.join(dirpath, name) for name in files]
    except OSError:
        pass
    return sorted(set(seen))


def handler(event, context):
    here = os.getcwd()
    root = os.path.dirname(here)
    return leave(root, here) if event == "leave" else look(root, here)
"""


@pytest.mark.parametrize("landlock", ["kernel", "none"])
async def test_no_file_a_strict_call_left_anywhere_in_the_scratch_root_is_seen_by_the_next(
    sandboxed: Harness, no_landlock: Harness, landlock: str
) -> None:
    """Without Landlock an instance may write its whole scratch tmpfs (the template and its
    instances are one uid): a strict call left a file in the scratch root (``../left``), in a
    dir named as an instance's, and in the dirs of the instances forked ahead of it, and the
    next calls read them.  Each later call sees none of them, with Landlock or without."""
    h = sandboxed if landlock == "kernel" else no_landlock
    require(h, "mount-namespace", "uid")
    name = f"scratch-left-{landlock}"
    await h.deploy(name, SCRATCH_LEFT, STRICT + "[scaling]\nprefork = 3\n")
    for _ in range(3):
        left = await h.invoke(name, b'"leave"')
        assert left.ok, left.error
        if landlock == "none":
            assert len(json.loads(left.output)) >= 3, left.output  # (it could: nothing but the uid kept it out)
        for _ in range(4):  # the instances forked ahead of it, and after
            seen = await h.invoke(name, b'"look"')
            assert seen.ok and json.loads(seen.output) == [], (left.output, seen.output, seen.error)


@pytest.mark.parametrize("landlock", ["kernel", "none"])
async def test_the_protections_say_what_keeps_strict_calls_files_apart(sandboxed: Harness, no_landlock: Harness, landlock: str) -> None:
    h = sandboxed if landlock == "kernel" else no_landlock
    require(h, "mount-namespace", "uid")
    name = f"scratch-prot-{landlock}"
    await h.deploy(name, SCRATCH_LEFT, STRICT)
    got = next(x for x in h.rt.pool(name).protections if x.name == "scratch-isolation")
    assert got.active, got
    if landlock == "kernel":
        assert got.reason.startswith("Landlock: an instance writes only its own scratch dir"), got
    else:
        assert got.reason.startswith("no Landlock: "), got
        assert "before a call starts after a strict call answered" in got.reason and "concurrent" in got.reason, got
