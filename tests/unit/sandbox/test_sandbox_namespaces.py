"""Namespaces: pid 1 with its own /proc, hostname, loopback-only network."""

from __future__ import annotations

import errno
import json
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
    expected = ("ipc-namespace", "mount-namespace", "pid-namespace", "uts-namespace", "net-namespace")
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


NS_FILES = ("pid_for_children", "mnt", "ipc", "uts", "net")


def _own_namespaces() -> dict[str, str]:
    return {n: os.readlink(f"/proc/self/ns/{n}") for n in NS_FILES}


def _namespaces_for_children() -> dict[str, Any]:
    """The zygote's pattern: fork a shell and its fitter into fresh namespaces, go back."""
    from spanfaas.sandbox import NamespacesForNextChildren, fit_namespaces

    before, cwd = _own_namespaces(), os.getcwd()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    ns = NamespacesForNextChildren("none")
    applied = ns.enter()
    shell = os.fork()
    if shell == 0:  # the template: waits until its fitter is done, then looks around
        ns.forget()
        os.read(go_r, 1)
        procs = sorted(int(x) for x in os.listdir("/proc") if x.isdigit())
        seen = {"pid": os.getpid(), "hostname": socket.gethostname(), "ns": _own_namespaces(),
                "proc_self": int(os.readlink("/proc/self")), "procs": procs}
        os.write(out_w, json.dumps(seen).encode())
        os._exit(0)
    fitter = os.fork()
    if fitter == 0:
        ns.forget()
        fit = fit_namespaces(ns.unshared, "fitted", "none")
        os.write(out_w, json.dumps([(p.name, p.active, p.reason) for p in fit]).encode())
        os._exit(0)
    ns.restore()
    after, cwd_after = _own_namespaces(), os.getcwd()
    os.waitpid(fitter, 0)
    fit = json.loads(os.read(out_r, 65536))
    os.write(go_w, b"1")
    os.waitpid(shell, 0)
    seen = json.loads(os.read(out_r, 65536))
    return {"applied": [(p.name, p.active) for p in applied], "fit": fit, "restored": after == before,
            "cwd": cwd_after == cwd, "seen": seen, "host_ns": before, "host_name": socket.gethostname()}


def test_namespaces_for_next_children_and_their_fitter(in_child: Callable[..., Any], require: Callable[..., None]) -> None:
    for name in NS:
        require(name)
    got = in_child(_namespaces_for_children).value
    assert all(active for _, active in got["applied"]), got["applied"]
    assert all(active for _, active, _ in got["fit"]), got["fit"]
    assert got["restored"], "the caller is back in its own namespaces"
    assert got["cwd"], "and in its own working directory"
    seen = got["seen"]
    assert seen["pid"] == 1 and seen["proc_self"] == 1, "the shell is pid 1, and /proc is its pid namespace's"
    assert seen["procs"] == [1], "the fitter is gone; no host pid is visible"
    assert seen["hostname"] == "fitted" != got["host_name"]
    for name in ("mnt", "ipc", "uts", "net"):
        assert seen["ns"][name] != got["host_ns"][name], name
