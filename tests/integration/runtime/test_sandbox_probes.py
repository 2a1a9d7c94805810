"""Sandbox probes run as function code: each is blocked or contained.

A probe is skipped, with the host's reason, only when the host lacks the
mechanism that blocks it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from spanfaas.errors import FunctionOutOfMemory
from tests.integration.runtime.conftest import Harness, require

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROBES = """
import json, os, signal, socket, subprocess, time

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}

def read(path):
    with open(path, "rb") as f:
        return len(f.read())

def write_scratch():
    with open("secret.txt", "w") as f:
        f.write("mine")
    return os.path.abspath("secret.txt")

def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    s.close()
    return "connected"

def fork_bomb():
    started = 0
    try:
        for _ in range(1000):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            started += 1
    except OSError as exc:
        return {"started": started, "stopped_by": type(exc).__name__}
    return {"started": started, "stopped_by": None}

def memory_bomb():
    hog = []
    while True:
        hog.append(bytearray(16 * 1024 * 1024))

def handler(event, context):
    what = event["probe"]
    if what == "scratch":
        return attempt(write_scratch)
    if what == "read":
        return attempt(lambda: read(event["path"]))
    if what == "kill":
        return attempt(lambda: os.kill(event["pid"], event.get("sig", 0)))
    if what == "connect":
        return attempt(lambda: connect(event["port"]))
    if what == "exec":
        return attempt(lambda: subprocess.run(["/bin/true"], check=True).returncode)
    if what == "fork_bomb":
        return fork_bomb()
    if what == "memory_bomb":
        return memory_bomb()
    if what == "spin":
        while True:
            pass
    if what == "whoami":
        return {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname()}
    return None
"""

MANIFEST = """
isolation = "{isolation}"
[resources]
memory = 64
timeout = 2
pids = 32
"""


async def _probe(h: Harness, name: str, **event: object) -> dict:
    r = await h.invoke(name, json.dumps(event).encode())
    assert r.ok, r.error
    return json.loads(r.output)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def probes(sandboxed: Harness) -> str:
    await sandboxed.deploy("probes", PROBES, MANIFEST.format(isolation="strict"))
    return "probes"


async def test_runs_as_a_dedicated_uid_in_its_own_pid_namespace(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "uid", "pid-namespace", "uts-namespace")
    who = await _probe(sandboxed, probes, probe="whoami")
    assert who["uid"] >= 200_000
    assert who["pid"] > 2 and who["ppid"] == 2, "pid 1 is the namespace's reaper, the template pid 2, instances its children"
    assert who["hostname"].startswith("probes")


async def test_reading_another_functions_scratch_dir_is_blocked(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "landlock")
    await sandboxed.deploy("victim", PROBES, MANIFEST.format(isolation="reuse"))
    secret = await _probe(sandboxed, "victim", probe="scratch")
    assert secret["ok"], secret
    assert (await _probe(sandboxed, "victim", probe="read", path=secret["value"]))["ok"], "the owner can read it"
    stolen = await _probe(sandboxed, probes, probe="read", path=secret["value"])
    # Denied by Landlock and the uid, or not even in this function's view of the filesystem.
    assert not stolen["ok"] and stolen["error"] in ("PermissionError", "FileNotFoundError"), stolen


async def test_reading_etc_shadow_is_blocked(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "landlock")
    got = await _probe(sandboxed, probes, probe="read", path="/etc/shadow")
    assert not got["ok"] and got["error"] in ("PermissionError", "FileNotFoundError"), got


async def test_signalling_the_template_and_host_pids_is_blocked(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "pid-namespace")
    pool = sandboxed.rt.pool(probes)
    template_pid = pool.template_pid
    template_in_ns = (await _probe(sandboxed, probes, probe="whoami"))["ppid"]
    for sig in (15, 9):
        got = await _probe(sandboxed, probes, probe="kill", pid=1, sig=sig)  # the namespace's reaper
        assert not got["ok"] or got["value"] is None
        got = await _probe(sandboxed, probes, probe="kill", pid=template_in_ns, sig=sig)
        assert not got["ok"] and got["error"] == "PermissionError", got  # another uid, or out of its Landlock signal scope
    host = await _probe(sandboxed, probes, probe="kill", pid=os.getpid(), sig=15)
    assert not host["ok"] and host["error"] in ("ProcessLookupError", "PermissionError"), host
    assert pool.template_pid == template_pid and pool.state == "ready", "the template survived"
    assert (await _probe(sandboxed, probes, probe="whoami"))["pid"] > 1


async def test_outbound_connection_is_contained_without_network(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "net-namespace")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        got = await _probe(sandboxed, probes, probe="connect", port=port)
    assert not got["ok"] and got["error"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), got


async def test_host_network_is_an_explicit_opt_in(sandboxed: Harness) -> None:
    await sandboxed.deploy("netfn", PROBES, 'network = "host"\n' + MANIFEST.format(isolation="strict"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        got = await _probe(sandboxed, "netfn", probe="connect", port=listener.getsockname()[1])
    assert got["ok"], got


async def test_execve_is_blocked_unless_allowed(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "seccomp")
    got = await _probe(sandboxed, probes, probe="exec")
    assert not got["ok"] and got["error"] == "PermissionError", got
    await sandboxed.deploy("execfn", PROBES, "allow_subprocess = true\n" + MANIFEST.format(isolation="strict"))
    allowed = await _probe(sandboxed, "execfn", probe="exec")
    assert allowed == {"ok": True, "value": 0}


async def test_fork_bomb_is_contained(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "cgroup-pids")
    got = await _probe(sandboxed, probes, probe="fork_bomb")
    assert got["stopped_by"] == "BlockingIOError" and got["started"] < 32, got
    assert (await _probe(sandboxed, probes, probe="whoami"))["uid"] >= 0, "the pool recovered"


async def test_memory_bomb_gives_out_of_memory(sandboxed: Harness, probes: str) -> None:
    require(sandboxed, "rlimits")
    r = await sandboxed.invoke(probes, b'{"probe": "memory_bomb"}')
    assert r.error is not None and r.error.kind == "oom", r.error
    assert (await _probe(sandboxed, probes, probe="whoami"))["pid"] > 0


async def test_cpu_spin_past_the_timeout_gives_timeout(sandboxed: Harness, probes: str) -> None:
    r = await sandboxed.invoke(probes, b'{"probe": "spin"}')
    assert r.error is not None and r.error.kind == "timeout", r.error
    assert (await _probe(sandboxed, probes, probe="whoami"))["pid"] > 0


SHARED_BOMB = """
import mmap

def handler(event, context):
    # Shared anonymous memory is not limited by RLIMIT_DATA: only the cgroup stops it.
    m = mmap.mmap(-1, 1024 * 1024 * 1024)
    for i in range(0, len(m), 4096):
        m[i] = 1
    return "survived"
"""


async def test_memory_bomb_past_rlimits_is_stopped_by_the_cgroup(sandboxed: Harness) -> None:
    require(sandboxed, "cgroup-memory")
    await sandboxed.deploy("shared-bomb", SHARED_BOMB, "[resources]\nmemory = 32\n[scaling]\nmax = 1\nprefork = 0\n")
    r = await sandboxed.invoke("shared-bomb")
    assert r.error is not None and r.error.kind == "oom", r.error
    assert "32 MiB" in r.error.message


SOCKET_BUFFERS = """
import socket

def handler(event, context):
    # Loopback TCP (network = "none" has it): what the kernel buffers for a connection
    # nobody reads, in each direction, up to tcp_wmem/tcp_rmem: megabytes a connection.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(event)
    held, buffered = [], 0
    for _ in range(event):
        out = socket.create_connection(listener.getsockname())
        into, _ = listener.accept()
        out.setblocking(False)
        try:
            while True:
                buffered += out.send(b"x" * 262144)
        except BlockingIOError:
            pass
        held.append((out, into))
    return buffered
"""


def _memory_limit(pid: int) -> int:
    """The memory limit of ``pid``'s cgroup, as the host sees it."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    v1 = next((path for _, ctrl, path in lines if "memory" in ctrl.split(",")), None)
    if v1 is not None:
        with open(f"/sys/fs/cgroup/memory{v1}/memory.limit_in_bytes") as f:
            return int(f.read())
    v2 = next(path for hid, _, path in lines if hid == "0")
    with open(f"/sys/fs/cgroup{v2}/memory.max") as f:
        return int(f.read())


async def test_socket_buffers_count_against_the_memory_limit(sandboxed: Harness) -> None:
    """Loopback TCP connections nobody reads held what they were sent in kernel socket
    buffers, which a cgroup v1 memory limit does not count (v2 does): a function of 32 MiB
    held ~4 MiB a connection, ~390 MiB with 100 of them, towards the host's tcp_mem (2 GiB
    here), past which every TCP socket of the host -- the gateway's, PostgreSQL's -- stalls."""
    require(sandboxed, "cgroup-memory", "net-namespace")
    await sandboxed.deploy("socket-buffers", SOCKET_BUFFERS, "[resources]\nmemory = 32\ntimeout = 30\n[scaling]\nmax = 1\nprefork = 0\n")
    limit = _memory_limit(sandboxed.rt.pool("socket-buffers").template_pid)
    r = await sandboxed.invoke("socket-buffers", b"100")
    assert r.ok, r.error
    # Counted apart from the limit (v1), in pages and ahead of use: about the limit, not several times it.
    assert json.loads(r.output) < 2 * limit, (json.loads(r.output) >> 20, limit >> 20)


SHARED_BOMB_PRINTING = """
import mmap, sys

def handler(event, context):
    print("mapping a GiB")
    context.logger.warning("it may not fit")
    print("to stderr too", file=sys.stderr)
    m = mmap.mmap(-1, 1024 * 1024 * 1024)
    for i in range(0, len(m), 4096):
        m[i] = 1
    return "survived"
"""


@pytest.mark.parametrize("isolation", ["strict", "reuse"])
async def test_an_oom_kill_keeps_what_the_call_printed(sandboxed: Harness, isolation: str) -> None:
    """A call the cgroup's OOM killer stopped came back with no logs: its capture died with it."""
    require(sandboxed, "cgroup-memory")
    name = f"printing-bomb-{isolation}"
    manifest = f'isolation = "{isolation}"\n[resources]\nmemory = 32\n[scaling]\nmax = 1\nprefork = 0\n'
    await sandboxed.deploy(name, SHARED_BOMB_PRINTING, manifest)
    r = await sandboxed.invoke(name)
    assert r.error is not None and r.error.kind == "oom", r.error
    assert "mapping a GiB" in r.logs and "it may not fit" in r.logs and "to stderr too" in r.logs, r.logs


BIG_ANSWER = """
import resource

def headroom():
    limit = resource.getrlimit(resource.RLIMIT_DATA)[0]
    with open("/proc/self/status") as f:
        used = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    return limit - used

def handler(event, context):
    if event == "bytes":
        return bytearray(2 * headroom())
    # Fits in memory, but its JSON encoding does not: the platform's encoder runs
    # out of memory (msgspec's encode() crashed the instance with SIGSEGV there).
    return {"message": "x" * int(headroom() * 0.6)}
"""


@pytest.mark.parametrize("event", [b'"str"', b'"bytes"'])
async def test_an_answer_too_large_for_the_memory_limit_is_out_of_memory(sandboxed: Harness, event: bytes) -> None:
    require(sandboxed, "rlimits")
    if "big-answer" not in sandboxed.rt.functions():
        await sandboxed.deploy("big-answer", BIG_ANSWER, "[resources]\nmemory = 64\n")
    r = await sandboxed.invoke("big-answer", event)
    assert r.error is not None and r.error.kind == "oom", r.error
    assert "64 MiB" in r.error.message and "resources.memory" in r.error.message, r.error
    with pytest.raises(FunctionOutOfMemory, match="MemoryError: .*64 MiB"):
        r.raise_for_error()


DENIED = """
import socket, subprocess

def handler(event, context):
    if event == "exec":
        return subprocess.run(["true"]).returncode
    if event == "dns":
        return socket.getaddrinfo("example.com", 80)
    socket.create_connection(("192.0.2.1", 80), timeout=2)
"""


async def test_what_the_sandbox_denies_says_which_manifest_key_allows_it(sandboxed: Harness) -> None:
    """A first function that runs a program or calls an API failed with a bare 'PermissionError:
    [Errno 1] Operation not permitted: 'true'' or 'Network is unreachable': nothing said that
    allow_subprocess or network = "host" (both off by default) was the cause."""
    await sandboxed.deploy("denied", DENIED)
    if require_active(sandboxed, "seccomp"):
        r = await sandboxed.invoke("denied", b'"exec"')
        assert r.error is not None and r.error.type == "PermissionError", r.error
        assert "allow_subprocess = true" in r.error.message, r.error.message
    if require_active(sandboxed, "net-namespace"):
        for event in (b'"dns"', b'"connect"'):
            r = await sandboxed.invoke("denied", event)
            assert r.error is not None and 'network = "host"' in r.error.message, r.error
    await sandboxed.deploy("allowed", DENIED, 'allow_subprocess = true\nnetwork = "host"\n')
    r = await sandboxed.invoke("allowed", b'"dns"')  # resolves, or fails for its own reasons: no hint
    assert r.error is None or 'network = "host"' not in r.error.message, r.error


async def test_a_plain_handler_error_gets_no_sandbox_hint(sandboxed: Harness) -> None:
    await sandboxed.deploy("plainerr", "def handler(event, context):\n    raise PermissionError(1, 'Operation not permitted')\n")
    r = await sandboxed.invoke("plainerr")
    assert r.error is not None and r.error.message == "[Errno 1] Operation not permitted", r.error


def require_active(h: Harness, name: str) -> bool:
    prot = next((x for x in h.rt.protections if x.name == name), None)
    return prot is not None and prot.active


SYSV_IPC = """
import ctypes, errno

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT, SHM_RDONLY, KEY = 0o1000, 0o10000, 0x5EC18

def handler(event, context):
    if event == "leave":  # what a call leaves behind it in SysV IPC, past its end
        shm = libc.shmget(KEY, 4096, IPC_CREAT | 0o600)
        if shm >= 0:
            ctypes.memmove(libc.shmat(shm, None, 0), b"call-1-secret", 13)
        msq = libc.msgget(KEY, IPC_CREAT | 0o600)
        sem = libc.semget(KEY, 1, IPC_CREAT | 0o600)
        return {"shm": shm >= 0, "msg": msq >= 0, "sem": sem >= 0, "errno": errno.errorcode.get(ctypes.get_errno())}
    shm = libc.shmget(KEY, 0, 0)
    seen = ctypes.string_at(libc.shmat(shm, None, SHM_RDONLY), 13).decode() if shm >= 0 else None
    return {"shm": seen, "msg": libc.msgget(KEY, 0) >= 0, "sem": libc.semget(KEY, 0, 0) >= 0}
"""


async def test_sysv_ipc_left_by_a_strict_call_is_not_seen_by_the_next(sandboxed: Harness) -> None:
    """A strict call's SysV shared memory segment (and message queue, semaphore set)
    outlived it in the function's IPC namespace: the next call read what it wrote."""
    require(sandboxed, "ipc-namespace")
    await sandboxed.deploy("sysv", SYSV_IPC, MANIFEST.format(isolation="strict"))
    left = await _probe_raw(sandboxed, "sysv", "leave")
    assert left["shm"], left  # shared memory works within a call
    seen = await _probe_raw(sandboxed, "sysv", "look")
    assert seen == {"shm": None, "msg": False, "sem": False}, seen
    await sandboxed.deploy("sysv-other", SYSV_IPC, MANIFEST.format(isolation="strict"))
    assert (await _probe_raw(sandboxed, "sysv-other", "look"))["shm"] is None, "nor another function"


async def _probe_raw(h: Harness, name: str, event: object) -> dict:
    r = await h.invoke(name, json.dumps(event).encode())
    assert r.ok, r.error
    return json.loads(r.output)


UNIX_CONNECT = """
import socket

def handler(event, context):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(event)
        return "connected"
"""


@pytest.fixture
def host_unix_listener() -> Iterator[str]:
    """A host service's unix socket that any uid may connect to (as PostgreSQL's and
    Redis's often are), in a dir any uid may traverse."""
    d = tempfile.mkdtemp(prefix="spanfaas-host-service-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "service.sock")
    try:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            os.chmod(path, 0o777)
            listener.listen()
            yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_a_host_unix_socket_is_out_of_reach_without_network(sandboxed: Harness, host_unix_listener: str) -> None:
    """With network = "none" a function connected to any unix socket of the host its uid
    may write to (a control plane's PostgreSQL or Redis socket): the network namespace
    does not hold path sockets, and Landlock (ABI < 9) does not govern connect."""
    require(sandboxed, "net-namespace", "seccomp")
    await sandboxed.deploy("unix-none", UNIX_CONNECT)
    r = await sandboxed.invoke("unix-none", json.dumps(host_unix_listener).encode())
    assert r.error is not None and r.error.type == "PermissionError", (r.output, r.error)
    assert 'set network = "host"' in r.error.message, r.error.message
    await sandboxed.deploy("unix-host", UNIX_CONNECT, 'network = "host"\n')
    r = await sandboxed.invoke("unix-host", json.dumps(host_unix_listener).encode())
    assert r.ok and json.loads(r.output) == "connected", r.error


async def test_network_host_reaches_the_control_planes_own_services_and_the_docs_warn(sandboxed: Harness) -> None:
    """network = "host" was documented as "none | host" and "the host network" only: nothing
    said that such a function reaches every service of the host on loopback -- the gateway,
    PostgreSQL, Redis, a Ray head (which runs any code it is sent) -- nor that unix sockets come with it."""
    if "netfn" not in sandboxed.rt.functions():
        await sandboxed.deploy("netfn", PROBES, 'network = "host"\n' + MANIFEST.format(isolation="strict"))
    with socket.socket() as control_plane:
        control_plane.bind(("127.0.0.1", 0))
        control_plane.listen()
        got = await _probe(sandboxed, "netfn", probe="connect", port=control_plane.getsockname()[1])
    assert got["ok"], got  # as the docs must say
    root = Path(__file__).parents[3]
    readme = (root / "README.md").read_text(encoding="utf-8")
    manifest_line = next(line for line in readme.splitlines() if line.startswith('network = "none"'))
    assert "control plane" in manifest_line and "docs/runtime.md" in manifest_line, manifest_line
    runtime_doc = (root / "docs" / "runtime.md").read_text(encoding="utf-8")
    warning = re.search(r'\*\*`network = "host"`[^\n]*(\n[^\n]+)*', runtime_doc)
    assert warning is not None, 'docs/runtime.md has no paragraph on network = "host"'
    for named in ("loopback", "gateway", "PostgreSQL", "Redis", "Ray", "unix sockets", "metadata"):
        assert named in warning.group(0), named


UNIX_DGRAM = """
import socket

def handler(event, context):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # allowed: no socket(AF_UNIX) made
    with a, b:
        a.sendto(b"from-the-function", event)  # a connected datagram socket sends to any path named
        return "sent"
"""


@pytest.fixture
def host_unix_datagram() -> Iterator[tuple[str, socket.socket]]:
    """A host service's unix datagram socket any uid may send to (as /dev/log, journald's)."""
    d = tempfile.mkdtemp(prefix="spanfaas-host-dgram-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "log.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as service:
            service.bind(path)
            os.chmod(path, 0o777)
            service.setblocking(False)
            yield path, service
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_a_host_unix_datagram_socket_is_out_of_reach_without_network(
    sandboxed: Harness, host_unix_datagram: tuple[str, socket.socket]
) -> None:
    """socketpair(AF_UNIX, SOCK_DGRAM) stayed allowed with network = "none", and a datagram
    socket sends to any path socket named (sendto, or connect again): the host's syslog,
    journald, any datagram service its uid may write to."""
    require(sandboxed, "net-namespace", "seccomp")
    path, service = host_unix_datagram
    await sandboxed.deploy("dgram-none", UNIX_DGRAM)
    r = await sandboxed.invoke("dgram-none", json.dumps(path).encode())
    try:
        got = service.recv(100)
    except BlockingIOError:
        got = b""
    assert got == b"" and r.error is not None and r.error.type == "PermissionError", (got, r.output, r.error)
    assert 'set network = "host"' in r.error.message, r.error.message


LEFTOVERS = """
import os

def handler(event, context):
    if event == "deep":  # deeper than the recursion limit, longer than PATH_MAX
        for _ in range(5000):
            os.mkdir("d")
            os.chdir("d")
    elif event == "wide":  # inodes until the memory limit: kernel memory no process holds
        n = 0
        while n < 5_000_000:
            os.mkdir(f"d{n}")
            n += 1
    return os.getpid()
"""


@pytest.mark.parametrize("shape", ["deep", "wide"])
async def test_a_tree_left_in_scratch_does_not_take_the_template_or_the_next_call(sandboxed: Harness, shape: str) -> None:
    """The template removed a finished instance's scratch dir by recursion, listing each
    dir whole: a tree 5000 deep raised RecursionError in it and a dir of ~100k entries
    ran it out of memory -- the template died, and the next (strict) call with it."""
    name = f"leftovers-{shape}"
    await sandboxed.deploy(name, LEFTOVERS, "[resources]\nmemory = 32\ntimeout = 60\n[scaling]\nmax = 1\nprefork = 0\n")
    pool = sandboxed.rt.pool(name)
    template = pool.template_pid
    r = await sandboxed.invoke(name, json.dumps(shape).encode())
    if shape == "deep":
        assert r.ok, r.error
    else:
        assert r.error is not None and r.error.kind == "oom", r.error
    for _ in range(3):
        r = await sandboxed.invoke(name, b'"next"')
        assert r.ok, r.error
    assert pool.template_pid == template and pool.state == "ready", "the template survived"


VSOCK = """
import socket

def handler(event, context):
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    return "made"
"""


def _host_has_vsock() -> bool:
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


async def test_a_vsock_socket_is_refused_without_network(sandboxed: Harness) -> None:
    """With network = "none" a function made an AF_VSOCK socket: vsock addresses are no
    network namespace's (a VM's CID is one for the whole VM, its hypervisor is CID 2), so
    in a virtual machine it reached the hypervisor's services past its empty network."""
    require(sandboxed, "net-namespace", "seccomp")
    if not _host_has_vsock():
        pytest.skip("no AF_VSOCK on this host")
    await sandboxed.deploy("vsock-none", VSOCK)
    r = await sandboxed.invoke("vsock-none")
    assert r.error is not None and r.error.type == "PermissionError", (r.output, r.error)
    assert 'set network = "host"' in r.error.message, r.error.message
    await sandboxed.deploy("vsock-host", VSOCK, 'network = "host"\n')
    r = await sandboxed.invoke("vsock-host")
    assert r.ok and json.loads(r.output) == "made", r.error



PRLIMIT_OTHERS = """
import os, resource

def handler(event, context):
    if event == "lower":  # what a call can do to the calls after it
        resource.prlimit(os.getppid(), resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))  # its own: fine
    with open("out", "wb") as f:
        f.write(b"x" * 100)
    return resource.prlimit(os.getppid(), resource.RLIMIT_FSIZE)  # reading: fine
"""


async def test_a_call_cannot_set_the_limits_of_its_template(sandboxed: Harness) -> None:
    """A strict call set its template's limits (prlimit on its parent: the same uid, and
    Landlock does not govern prlimit), which every instance forked after inherits: with
    RLIMIT_FSIZE 0 no later call could write a file, as long as the template lived."""
    require(sandboxed, "seccomp", "uid")
    await sandboxed.deploy("prlimit", PRLIMIT_OTHERS, MANIFEST.format(isolation="strict"))
    template = sandboxed.rt.pool("prlimit").template_pid
    r = await sandboxed.invoke("prlimit", b'"lower"')
    assert r.error is not None and r.error.type == "PermissionError", (r.output, r.error)
    for _ in range(3):
        r = await sandboxed.invoke("prlimit", b'"look"')
        assert r.ok and json.loads(r.output)[0] == resource.RLIM_INFINITY, (r.output, r.error)
    assert sandboxed.rt.pool("prlimit").template_pid == template, "the template survived"


SCHEDULING_OTHERS = """
import os

def handler(event, context):
    if event == "slow-down":  # what a call can do to the calls after it
        os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)
        os.sched_setaffinity(os.getppid(), {min(os.sched_getaffinity(0))})
    os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))  # its own: fine
    os.sched_setaffinity(0, os.sched_getaffinity(0))
    return [os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0))]
"""


async def test_a_call_cannot_change_how_its_template_is_scheduled(sandboxed: Harness) -> None:
    """A strict call set its template's nice value and CPU affinity (the same uid is all the
    kernel asks), which every instance forked after inherits: nice 19 and pinned to one CPU,
    for as long as the template lived."""
    require(sandboxed, "seccomp", "uid")
    await sandboxed.deploy("sched", SCHEDULING_OTHERS, MANIFEST.format(isolation="strict"))
    r = await sandboxed.invoke("sched", b'"slow-down"')
    assert r.error is not None and r.error.type == "PermissionError", (r.output, r.error)
    expected = [os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0))]
    for _ in range(3):
        r = await sandboxed.invoke("sched", b'"look"')
        assert r.ok and json.loads(r.output) == expected, (r.output, r.error)


INOTIFY = """
import ctypes, os, re

libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE = 0x100

def watch(fd, path):
    if libc.inotify_add_watch(fd, os.fsencode(path), IN_CREATE) < 0:
        return ctypes.get_errno()
    return 0

def handler(event, context):
    fd = libc.inotify_init1(os.O_CLOEXEC)
    try:
        here = os.getcwd()
        root, me = os.path.split(here)
        seq = int(re.match(r"i(\\d+)", me).group(1))
        guessed = [os.path.join(root, f"i{k}") for k in range(max(seq - 8, 1), seq + 9) if k != seq]
        return {"own": watch(fd, here), "root": watch(fd, root),
                "siblings": sum(watch(fd, p) == 0 for p in guessed)}
    finally:
        os.close(fd)
"""


async def test_a_call_cannot_watch_the_scratch_dirs_of_the_calls_beside_it(sandboxed: Harness) -> None:
    """inotify is not Landlock's: a strict call put a watch on the scratch root and on
    its siblings' dirs (i<n+1>, forked ahead), and learnt the names of the files a
    concurrent call of the same function made.  The root is not readable (mode 0300:
    the template makes and removes dirs in it, lists nothing) and an instance's dir
    name holds a random part, so there is nothing to watch but its own."""
    require(sandboxed, "landlock")
    await sandboxed.deploy("notify", INOTIFY, "[scaling]\nprefork = 3\n")
    for _ in range(3):
        r = await sandboxed.invoke("notify")
        assert r.ok, r.error
        got = json.loads(r.output)
        assert got["own"] == 0 and got["root"] == 13 and got["siblings"] == 0, got  # 13: EACCES
