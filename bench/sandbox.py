"""Cost of each sandbox step, in µs: prints a table (median, p90, n).

Every step that changes the calling process is timed inside a fresh forked
child (the fork itself is not counted), so each sample is a first call, as
in a real template.  Run as root for the full table:

    .venv/bin/python bench/sandbox.py
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable

from spanfaas.sandbox import (
    Cgroup,
    SandboxPlan,
    cleanup_cgroups,
    drop_privileges,
    landlock_restrict,
    prepare,
    probe,
    seccomp_deny,
    set_rlimits,
    setup_pid1,
    unshare_namespaces,
)
from spanfaas.sandbox.cgroups import hierarchies

N = 30
ROOT = f"spanfaas-bench-{os.getpid()}"


def in_child(setup: Callable[[], object], step: Callable[[], object]) -> float:
    """µs of ``step()`` in a fresh child, after an untimed ``setup()``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            setup()
            t = time.perf_counter_ns()
            step()
            os.write(w, struct.pack("q", time.perf_counter_ns() - t))
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 8)
    os.close(r)
    os.waitpid(pid, 0)
    return struct.unpack("q", data)[0] / 1000 if len(data) == 8 else float("nan")


def in_pid1(step: Callable[[], object]) -> float:
    """µs of ``step()`` in pid 1 of a fresh namespace set (unshare untimed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            unshare_namespaces("none")
            inner = os.fork()
            if inner == 0:
                try:
                    t = time.perf_counter_ns()
                    step()
                    os.write(w, struct.pack("q", time.perf_counter_ns() - t))
                finally:
                    os._exit(0)
            os.waitpid(inner, 0)
        finally:
            os._exit(0)
    os.close(w)
    data = os.read(r, 8)
    os.close(r)
    os.waitpid(pid, 0)
    return struct.unpack("q", data)[0] / 1000 if len(data) == 8 else float("nan")


def here(step: Callable[[], object]) -> float:
    t = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - t) / 1000


def fork_wait() -> float:
    t = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return (time.perf_counter_ns() - t) / 1000


def main() -> None:
    prepare()  # as a zygote would: probe cached, seccomp programs built before any fork
    scratch = tempfile.mkdtemp(prefix="spanfaas-bench-")
    ro = [p for p in sys.path if os.path.isdir(p)] + ["/usr", "/etc/ssl"]
    plan = SandboxPlan(name="bench", uid=65534, instance_memory_bytes=256 << 20, pids=64)
    counter = iter(range(10**6))

    def cg_create() -> None:
        Cgroup.create(ROOT, f"c{next(counter)}", memory_bytes=256 << 20, cpu=1.0, pids=64)

    def probe_cold() -> None:
        probe.cache_clear()
        probe()

    def layered() -> None:
        landlock_restrict(ro, [scratch])

    rows: list[tuple[str, Callable[[], float]]] = [
        ("fork+exit+wait (reference)", fork_wait),
        ("probe() cold", lambda: here(probe_cold)),
        ("probe() cached", lambda: here(probe)),
        ("Cgroup.create (3 controllers, limits)", lambda: here(cg_create)),
        ("unshare_namespaces('none')", lambda: in_child(lambda: None, lambda: unshare_namespaces("none"))),
        ("unshare_namespaces('host')", lambda: in_child(lambda: None, lambda: unshare_namespaces("host"))),
        ("setup_pid1 (mnt ns, /proc, hostname, lo)", lambda: in_pid1(lambda: setup_pid1("bench", "none"))),
        ("set_rlimits", lambda: in_child(lambda: None, lambda: set_rlimits(plan))),
        ("drop_privileges", lambda: in_child(lambda: None, lambda: drop_privileges(65534))),
        (f"landlock_restrict ({len(ro)} ro, 1 rw)", lambda: in_child(lambda: None, layered)),
        ("landlock_restrict 2nd layer (instance)", lambda: in_child(layered, lambda: landlock_restrict(ro, [scratch]))),
        ("seccomp_deny(False)", lambda: in_child(lambda: None, lambda: seccomp_deny(False))),
    ]
    print(f"{'step':<44} {'median µs':>10} {'p90 µs':>10} {'n':>4}")
    try:
        for label, sample in rows:
            xs = sorted(sample() for _ in range(N))
            print(f"{label:<44} {statistics.median(xs):>10.1f} {xs[int(0.9 * (N - 1))]:>10.1f} {N:>4}")
        cgs = [Cgroup.create(ROOT, f"a{i}", memory_bytes=0, cpu=0, pids=0) for i in range(N)]
        attach, destroy = [], []
        for cg in cgs:
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(30)
                finally:
                    os._exit(0)
            attach.append(here(lambda: cg.attach(pid)))
            destroy.append(here(cg.destroy))
            os.waitpid(pid, 0)
        for label, xs in (("Cgroup.attach", attach), ("Cgroup.destroy (kill 1 proc + rmdir)", destroy)):
            xs.sort()
            print(f"{label:<44} {statistics.median(xs):>10.1f} {xs[int(0.9 * (N - 1))]:>10.1f} {N:>4}")
    finally:
        if hierarchies():
            cleanup_cgroups(ROOT)
        os.rmdir(scratch)


if __name__ == "__main__":
    main()
