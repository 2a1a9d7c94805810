"""Namespaces: pid 1 with its own /proc, hostname, loopback-only network."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from spanfaas.sandbox import _libc, setup_pid1, unshare_namespaces

NS = ("pid-namespace", "mount-namespace", "ipc-namespace", "uts-namespace", "net-namespace")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP listener on the host's 127.0.0.1; yields its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _connect(port: int) -> str:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))


CGROUP_PROCS = "/sys/fs/cgroup/pids/cgroup.procs"


def _write_errno(path: str) -> str:
    """Try to open a host-wide knob for writing (without writing anything)."""
    try:
        os.close(os.open(path, os.O_WRONLY))
        return "writable"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e))


def _rw_mounts_under(top: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        fields = [line.split() for line in f]
    return [m[4] for m in fields if (m[4] == top or m[4].startswith(top + "/")) and "ro" not in m[5].split(",")]


def _inside_pid1(name: str, network: str, host_port: int, old_kernel: bool) -> dict[str, Any]:
    if old_kernel:  # as on Linux < 5.12: no mount_setattr, one remount per mount point
        del _libc.NR["mount_setattr"]
    applied = setup_pid1(name, network)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        inner = _connect(srv.getsockname()[1])
    return {
        "applied": [(p.name, p.active) for p in applied],
        "pid": os.getpid(),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "hostname": socket.gethostname(),
        "host": _connect(host_port),
        "inner": inner,
        "sysctl": _write_errno("/proc/sys/vm/swappiness"),
        "sys_rw_mounts": _rw_mounts_under("/sys"),
        "cgroupfs": _write_errno(f"{CGROUP_PROCS}") if os.path.exists(CGROUP_PROCS) else "EROFS",
    }


def _template(
    run_in_child: Callable[..., Any], name: str, network: str, host_port: int, old_kernel: bool = False
) -> dict[str, Any]:
    unshared = unshare_namespaces(network)
    inner = run_in_child(_inside_pid1, name, network, host_port, old_kernel)
    return {"unshared": [(p.name, p.active, p.reason) for p in unshared], **inner.value, "status": inner.status}


def _host_view() -> tuple[str, list[str], str]:
    with open("/proc/self/mountinfo") as f:
        mounts = f.read().splitlines()
    return socket.gethostname(), mounts, os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize("old_kernel", [False, True], ids=["mount_setattr", "remount-each"])
def test_pid1_sees_only_itself_and_loopback(
    in_child: Callable[..., Any], require: Callable[..., None], host_listener: int, old_kernel: bool
) -> None:
    require(*NS)
    before = _host_view()
    got = in_child(_template, in_child, "fn-test", "none", host_listener, old_kernel).value
    assert [(n, a) for n, a, _ in got["unshared"]] == [(n, True) for n in NS]
    expected = ("mount-namespace", "pid-namespace", "uts-namespace", "net-namespace")
    assert sorted(got["applied"]) == sorted((n, True) for n in expected)
    assert got["pid"] == 1
    assert got["procs"] == [1], "only itself in the new /proc"
    assert got["hostname"] == "fn-test"
    assert got["host"] == "ECONNREFUSED", "the host's 127.0.0.1 is another stack"
    assert got["inner"] == "connected", "loopback is up inside"
    assert got["status"] == 0
    assert got["sysctl"] == got["cgroupfs"] == "EROFS", "host-wide knobs read-only"
    assert got["sys_rw_mounts"] == []
    assert _host_view() == before, "hostname, mounts and network of the host untouched"


def test_network_host_keeps_host_network(
    in_child: Callable[..., Any], require: Callable[..., None], host_listener: int
) -> None:
    require("pid-namespace", "mount-namespace", "uts-namespace")
    got = in_child(_template, in_child, "fn-net", "host", host_listener).value
    net = [u for u in got["unshared"] if u[0] == "net-namespace"][0]
    assert not net[1] and "host" in net[2]
    assert got["host"] == "connected"
    assert got["pid"] == 1 and got["hostname"] == "fn-net"


def _pid1_exits_then_fork(run_in_child: Callable[..., Any]) -> tuple[int, str]:
    unshare_namespaces("none")
    first = run_in_child(os.getpid)
    try:
        pid = os.fork()
    except OSError as e:
        return first.value, errno.errorcode[e.errno or 0]
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return first.value, "forked"


def test_template_cannot_fork_after_its_pid1_exits(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    """Documents the trap: once pid 1 is gone the namespace is dead for good."""
    require("pid-namespace")
    assert in_child(_pid1_exits_then_fork, in_child).value == (1, "ENOMEM")


def _setup_without_unshare() -> tuple[list[tuple[str, bool]], str]:
    applied = setup_pid1("renamed", "none")
    return [(p.name, p.active) for p in applied], socket.gethostname()


def test_setup_pid1_outside_a_namespace_changes_nothing_global(in_child: Callable[..., Any]) -> None:
    applied, hostname = in_child(_setup_without_unshare).value
    assert hostname == socket.gethostname() != "renamed"
    assert dict(applied)["pid-namespace"] is False
    assert dict(applied)["uts-namespace"] is False
    assert dict(applied)["net-namespace"] is False


def _pid_namespace_for_one_child() -> dict[str, Any]:
    from spanfaas.sandbox import PidNamespaceForNextChild

    before = os.readlink("/proc/self/ns/pid_for_children")
    r, w = os.pipe()
    with PidNamespaceForNextChild() as prot:
        pid = os.fork()
    if pid == 0:
        os.write(w, str(os.getpid()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    inside = int(os.read(r, 16))
    after = os.readlink("/proc/self/ns/pid_for_children")
    second = os.fork()  # an ordinary child again
    if second == 0:
        os.write(w, str(os.getpid()).encode())
        os._exit(0)
    os.waitpid(second, 0)
    return {"active": prot.active, "inside": inside, "restored": after == before == os.readlink("/proc/self/ns/pid"),
            "second": int(os.read(r, 16)), "second_pid": second}


def test_pid_namespace_for_the_next_child_only(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    require("pid-namespace")
    got = in_child(_pid_namespace_for_one_child).value
    assert got["active"]
    assert got["inside"] == 1, "the child is pid 1 of its own namespace"
    assert got["restored"], "the parent's later children stay in its namespace"
    assert got["second"] == got["second_pid"] != 1
