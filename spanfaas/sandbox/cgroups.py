"""One cgroup per function: memory, CPU quota and pids for the whole group.

A function's template and every instance forked from it live in one cgroup,
so a memory bomb is OOM-killed inside the function's budget, a fork bomb
hits ``pids.max``, and removing the function kills everything it started —
even processes that escaped their parent — by emptying the cgroup.

Both layouts are supported, per controller, because hybrid hosts exist:

* cgroup v1: one hierarchy per controller (``/sys/fs/cgroup/memory/...``),
  so one function has up to three directories;
* cgroup v2: one unified directory with the controllers enabled in the
  parents' ``cgroup.subtree_control``.

``root`` is a path relative to each hierarchy's mount point; the layout is
``<mount>/<root>/<name>``.  Nothing here is cached per process except the
mount table, so a ``Cgroup`` may be used from any process (it only holds
paths).
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import time
from typing import Final, NamedTuple

from spanfaas.model import Protection
from spanfaas.sandbox import _libc
from spanfaas.sandbox.errors import SandboxError

__all__ = ["CONTROLLERS", "Cgroup", "Hierarchy", "cleanup_cgroups", "hierarchies"]

CONTROLLERS: Final = ("memory", "cpu", "pids")
CFS_PERIOD_US: Final = 100_000
KILL_TIMEOUT_S: Final = 2.0


class Hierarchy(NamedTuple):
    """Where one controller is mounted, and in which cgroup version."""

    version: int
    mount: str


@functools.cache
def hierarchies() -> dict[str, Hierarchy]:
    """Map each of memory/cpu/pids to where it can be used on this host.

    A controller enabled in a v2 hierarchy wins over a v1 mount of the same
    name (the kernel binds a controller to one hierarchy only, so at most one
    of them works).  Cached: the mount table does not change under us.
    """
    found: dict[str, Hierarchy] = {}
    v2: list[str] = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount, fstype, options = _libc.unescape_mount_field(fields[4]), tail[0], tail[2].split(",")
        if fstype == "cgroup2":
            v2.append(mount)
        elif fstype == "cgroup":
            for ctrl in CONTROLLERS:
                if ctrl in options and ctrl not in found:
                    found[ctrl] = Hierarchy(1, mount)
    for mount in v2:
        try:
            with open(os.path.join(mount, "cgroup.controllers")) as f:
                enabled = f.read().split()
        except OSError:
            continue
        for ctrl in CONTROLLERS:
            if ctrl in enabled:
                found[ctrl] = Hierarchy(2, mount)
    return found


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_keyed(path: str, key: str) -> int:
    """Read ``key N`` from a flat-keyed cgroup file (memory.events, oom_control)."""
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except FileNotFoundError:
        return 0
    return 0


def _procs(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def _evict(dirs: list[str], timeout: float = KILL_TIMEOUT_S) -> None:
    """SIGKILL everything in ``dirs`` until they are empty, within ``timeout``.

    v2's ``cgroup.kill`` kills atomically (no fork race).  On v1 we loop:
    each round kills every listed pid, so a child forked between the read
    and the kill is caught by the next round; a killed process cannot fork,
    and pids.max bounds the rounds in practice.
    """
    for d in dirs:
        kill_file = os.path.join(d, "cgroup.kill")
        if os.path.exists(kill_file):
            _write(kill_file, "1")
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        pids = sorted({p for d in dirs for p in _procs(d)})
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            except PermissionError as e:
                raise SandboxError(f"cannot kill pid {pid} in cgroup {dirs[0]}: {e}; run the runtime as root") from e
        if time.monotonic() > deadline:
            raise SandboxError(f"cgroup {dirs[0]} still holds pids {pids} after {timeout:g} s of SIGKILL")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _rmdir(directory: str, timeout: float = KILL_TIMEOUT_S) -> None:
    """Remove one empty cgroup directory; EBUSY right after a kill is retried."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise SandboxError(f"cannot remove cgroup {directory}: {e}") from e
            time.sleep(0.001)


def _limit_memory(h: Hierarchy, d: str, limit: int) -> str:
    """Apply a memory limit; returns a short description of what was set.

    Swap is switched off for the group (memsw = limit on v1, swap.max = 0
    on v2, swappiness 0) so that going over the limit OOM-kills at once
    instead of swapping the host into the ground.

    Socket buffers: v2 counts them in ``memory.max``; v1 counts them nowhere
    until the group's ``memory.kmem.tcp.limit_in_bytes`` is set (TCP's, and any
    socket's that keeps memory accounts, UDP's).  Unset, loopback connections
    nobody reads held ~4 MiB each: a 32 MiB function held 374 MiB in 100 of them,
    towards the host's ``tcp_mem``, past which every TCP socket of the host
    stalls.  Set to the limit, a send past it waits (EAGAIN), as under memory
    pressure; the buffers count apart from the limit, so the group holds at
    most twice it.
    """
    if h.version == 2:
        _write(os.path.join(d, "memory.max"), str(limit) if limit else "max")
        swap = os.path.join(d, "memory.swap.max")
        if os.path.exists(swap):
            _write(swap, "0" if limit else "max")
        return f"max {limit >> 20} MiB, no swap" if limit else "no limit"
    value = str(limit) if limit else "-1"
    mem, memsw = os.path.join(d, "memory.limit_in_bytes"), os.path.join(d, "memory.memsw.limit_in_bytes")
    has_memsw = os.path.exists(memsw)
    try:
        _write(mem, value)
    except OSError as e:
        # memsw must stay >= limit: when raising, move memsw first.
        if e.errno != errno.EINVAL or not has_memsw:
            raise
        _write(memsw, value)
        _write(mem, value)
    if has_memsw:
        _write(memsw, value)
    notes = ["memsw = limit"] if has_memsw else []
    tcp = os.path.join(d, "memory.kmem.tcp.limit_in_bytes")
    if os.path.exists(tcp):
        _write(tcp, value)
        notes.append("socket buffers = limit")
    try:
        _write(os.path.join(d, "memory.swappiness"), "0")
        notes.append("swappiness 0")
    except OSError as e:
        notes.append(f"swappiness not set ({e.strerror})")
    what = f"limit {limit >> 20} MiB" if limit else "no limit"
    return ", ".join([what, *notes])


def _limit_cpu(h: Hierarchy, d: str, cpu: float) -> str:
    quota = max(1000, round(cpu * CFS_PERIOD_US)) if cpu else 0
    if h.version == 2:
        _write(os.path.join(d, "cpu.max"), f"{quota if quota else 'max'} {CFS_PERIOD_US}")
    else:
        _write(os.path.join(d, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
        _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota) if quota else "-1")
    return f"quota {quota} us per {CFS_PERIOD_US} us" if quota else "no limit"


def _limit_pids(h: Hierarchy, d: str, pids: int) -> str:
    _write(os.path.join(d, "pids.max"), str(pids) if pids else "max")
    return f"max {pids}" if pids else "no limit"


class Cgroup:
    """The cgroup of one function, across every hierarchy that is usable.

    Holds only paths, so it survives ``fork`` and may be rebuilt by
    ``create`` (idempotent) from another process.
    """

    def __init__(self, name: str, dirs: dict[str, tuple[Hierarchy, str]], active: list[Protection]) -> None:
        self.name = name
        self._dirs = dirs  # controller -> (hierarchy, directory)
        self.active = active

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {sorted({d for _, d in self._dirs.values()})})"

    @classmethod
    def create(cls, root: str, name: str, *, memory_bytes: int, cpu: float, pids: int) -> Cgroup:
        """Create (or update) ``<mount>/<root>/<name>`` and set its limits.

        Never raises for a missing or read-only controller: that controller's
        Protection says why and the others still apply.  A limit of 0 keeps
        the directory (for accounting and ``kill_all``) but sets no limit.
        """
        if not name or "/" in name or name in (".", ".."):
            raise SandboxError(f"invalid cgroup name {name!r}: one path component expected")
        found = hierarchies()
        wanted: dict[str, float] = {"memory": memory_bytes, "cpu": cpu, "pids": pids}
        dirs: dict[str, tuple[Hierarchy, str]] = {}
        active: list[Protection] = []
        for ctrl in CONTROLLERS:
            label = f"cgroup-{ctrl}"
            h = found.get(ctrl)
            if h is None:
                active.append(Protection(label, False, f"no {ctrl} controller in any cgroup v1 or v2 hierarchy"))
                continue
            d = os.path.join(h.mount, root, name)
            try:
                if h.version == 2:
                    _enable_v2(h.mount, root, ctrl)
                os.makedirs(d, exist_ok=True)
                dirs[ctrl] = (h, d)
                if ctrl == "memory":
                    what = _limit_memory(h, d, memory_bytes)
                elif ctrl == "cpu":
                    what = _limit_cpu(h, d, cpu)
                else:
                    what = _limit_pids(h, d, pids)
            except OSError as e:
                active.append(Protection(label, False, f"cgroup v{h.version} at {d}: {e.strerror or e}"))
                continue
            on = bool(wanted[ctrl])
            active.append(Protection(label, on, f"cgroup v{h.version} at {d}: {what}"))
        return cls(name, dirs, active)

    @staticmethod
    def rename(root: str, old: str, new: str) -> bool:
        """Rename ``<mount>/<root>/<old>`` to ``<new>`` in every hierarchy, processes
        and limits kept; all or nothing.  cgroup v1 allows it, v2 refuses
        (the caller keeps the old name then)."""
        done: list[tuple[str, str]] = []
        for mount in sorted({h.mount for h in hierarchies().values()}):
            src, dst = os.path.join(mount, root, old), os.path.join(mount, root, new)
            if not os.path.isdir(src):
                continue
            try:
                os.rename(src, dst)
            except OSError:
                for a, b in reversed(done):
                    os.rename(b, a)
                return False
            done.append((src, dst))
        return True

    def directories(self) -> list[str]:
        """The cgroup's directory in each hierarchy (one on v2, up to three on v1).

        A process joins by writing its pid to ``<dir>/cgroup.procs`` (as a
        forked template does for itself).
        """
        return sorted({d for _, d in self._dirs.values()})

    def attach(self, pid: int) -> None:
        """Move ``pid`` (the whole process) into this cgroup in every hierarchy.

        Raises SandboxError when a hierarchy refuses: a process believed to
        be limited but not in its cgroup is worse than a loud failure.
        """
        for d in self.directories():
            try:
                _write(os.path.join(d, "cgroup.procs"), str(pid))
            except OSError as e:
                raise SandboxError(f"cannot attach pid {pid} to cgroup {d}: {e.strerror or e}") from e

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup so far."""
        entry = self._dirs.get("memory")
        if entry is None:
            return 0
        h, d = entry
        if h.version == 2:
            return _read_keyed(os.path.join(d, "memory.events"), "oom_kill")
        return _read_keyed(os.path.join(d, "memory.oom_control"), "oom_kill")

    def pids(self) -> list[int]:
        """Every process in the cgroup, as pids of the caller's pid namespace."""
        return sorted({p for d in self.directories() for p in _procs(d)})

    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup and wait (≤ 2 s) until it is empty."""
        _evict(self.directories())

    def destroy(self) -> None:
        """Kill everything, then remove the directory in every hierarchy. Idempotent."""
        dirs = [d for d in self.directories() if os.path.isdir(d)]
        if dirs:
            _evict(dirs)
        for d in dirs:
            _rmdir(d)


def _enable_v2(mount: str, root: str, ctrl: str) -> None:
    """Make ``ctrl`` available to ``<mount>/<root>/*`` on a v2 hierarchy."""
    parent = mount
    for part in [p for p in root.split("/") if p]:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            if ctrl not in f.read().split():
                _write(os.path.join(parent, "cgroup.subtree_control"), f"+{ctrl}")
        parent = os.path.join(parent, part)
        os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, "cgroup.subtree_control")) as f:
        if ctrl not in f.read().split():
            _write(os.path.join(parent, "cgroup.subtree_control"), f"+{ctrl}")


def cleanup_cgroups(root: str) -> None:
    """Remove ``<root>`` and every cgroup below it in every hierarchy.

    For start-up after a crash: processes still in those cgroups are killed
    first (deepest cgroups first), then the directories are removed.
    """
    if not root.strip("/"):
        raise SandboxError("refusing to clean up the cgroup root itself; pass a sub-path such as 'spanfaas'")
    mounts = sorted({h.mount for h in hierarchies().values()})
    for mount in mounts:
        top = os.path.join(mount, root)
        if not os.path.isdir(top):
            continue
        # topdown=False yields children before parents, as rmdir needs.
        for d, _, _ in os.walk(top, topdown=False):
            _evict([d])
            _rmdir(d)
