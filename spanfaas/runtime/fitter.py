"""The fitter: a throwaway process that fits a template's sandbox around it.

On Python 3.11 every object a process touches has its reference count
written, so every page of Python code a template runs after its fork
becomes that template's own memory (copy-on-write): the sandbox set-up
used to cost each idle function ~0.5 MiB.  Most of that set-up is not
about the template's process at all but about its namespaces and cgroup,
which other processes can change for it.  The zygote forks a fitter
beside each template (inside the template's new namespaces, or joining
them later for a spare), and the fitter:

* joins the template to its cgroup (a cgroup v1 join can wait 5-20 ms);
* makes the namespaces whole (``sandbox.fit_namespaces``): private
  mounts, the pid namespace's ``/proc``, read-only ``/sys``, hostname,
  loopback;
* for the function: copies its code to ``/var/task`` and mounts its
  scratch tmpfs on ``/var/tmp`` (``fixedpaths``: the function sees no host
  path of either), exposes the interpreter's trees to the function's uid
  (``fsview``) and sets the template's rlimits (``prlimit``);

and builds the template's Landlock ruleset (paths resolved in its mount
namespace), then sends a ``FitReport`` -- with the ruleset's fd -- on a
SOCK_SEQPACKET socket and exits; its pages die with it.
The template reads the report before it loads any user code and does
only what a process can only do to itself: uid, Landlock, seccomp.
"""

from __future__ import annotations

import _socket
import os
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import msgspec

from spanfaas.model import Protection
from spanfaas.runtime.protocol import recv_msg_lean
from spanfaas.sandbox.plan import SandboxPlan

__all__ = ["Fit", "FitReport", "channel", "fit_function", "fit_shell", "read_report", "run", "warm"]

MS_NOSUID = 0x2
MS_NODEV = 0x4


class FitReport(msgspec.Struct, kw_only=True):
    protections: list[Protection] = []
    function: bool = False
    """The function's part was done: ``uid`` is the uid to drop to."""
    uid: int | None = None
    plan: SandboxPlan | None = None
    """The plan as the template applies it (the uid above, no per-instance data
    limit): decoded here into the record, not converted by the template."""
    error: str = ""
    """Set when the template must not start (it could not join its cgroup)."""
    code_dir: str = ""
    """Where the template finds the function's code in its namespace (``fixedpaths.CODE``);
    "": at the bundle's host path."""
    scratch_dir: str = ""
    """Where it makes its instances' scratch dirs (``fixedpaths.SCRATCH``); "": at the host path."""
    runtime_paths: bool = False
    """The interpreter, venv, spanfaas and image packages are bound at their fixed paths
    (``sandbox/runtimepaths.py``), as the zygote named them; else the template names them by
    their host paths again."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FitReport)


Fit = tuple[FitReport, list[int]]
"""A report and the fds it carries (at most the Landlock ruleset)."""


def run(report_fd: int, work: Callable[[], Fit]) -> NoReturn:
    """In the fitter: do ``work``, send its report on the socket ``report_fd``, exit."""
    try:
        report, fds = work()
    except BaseException as exc:  # the template must hear of any failure
        traceback.print_exc()
        report, fds = FitReport(error=f"the sandbox fitter failed: {type(exc).__name__}: {exc}"), []
    try:
        sock = socket.socket(fileno=report_fd)
        if fds:
            socket.send_fds(sock, [_encoder.encode(report)], fds)
        else:
            sock.send(_encoder.encode(report))
    finally:
        os._exit(0)


def channel() -> tuple[int, int]:
    """The report channel: (the template's end, the fitter's end), close-on-exec."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    return ours.detach(), theirs.detach()


def warm() -> None:
    """In the zygote: decode a report once, so that msgspec's plan for it is
    built here and inherited, not built (and un-shared) in every template."""
    plan = SandboxPlan(name="warm", uid=1, cpu=1.0, ro_paths=("/",), rw_paths=("/tmp",))
    sample = FitReport(protections=[Protection("warm", True, "warm")], function=True, uid=1, plan=plan)
    _decoder.decode(_encoder.encode(sample))


def read_report(fd: int) -> Fit:
    """In the template: the fitter's report and its fds; closes ``fd``.

    With ``_socket`` and ``recvmsg`` directly: ``socket.socket`` and
    ``socket.recv_fds`` run enough Python to un-share ~50 KiB more of every
    sandboxed template (docs/runtime.md, "Memory")."""
    sock = _socket.socket(fileno=fd)
    try:
        got = recv_msg_lean(sock, _decoder)
    finally:
        sock.close()
    if got is None:
        return FitReport(error="the sandbox fitter died without a report; see the runtime's log"), []
    return got


def join_cgroups(procs: Sequence[int], pid: int) -> str:
    """Write ``pid`` (as this process sees it) into each open cgroup.procs; an error or ""."""
    try:
        for fd in procs:
            if fd < 0:
                return "a cgroup.procs of the function could not be opened; see the runtime's log"
            os.write(fd, str(pid).encode())
    except OSError as exc:
        return f"could not join the function's cgroup: {exc}"
    return ""


def fit_shell(unshared: int, network: str, name: str | None, procs: Sequence[int], pid: int) -> Fit:
    """The shell's part: cgroup, then namespaces (``name``: hostname, when known)."""
    error = join_cgroups(procs, pid)
    if error:
        return FitReport(error=error), []
    if not unshared:
        return FitReport(), []
    from spanfaas import sandbox

    return FitReport(protections=sandbox.fit_namespaces(unshared, name, network)), []


def fit_function(
    plan: Any,
    bundle: str,
    scratch_dir: str,
    unshared: int,
    pid: int,
    *,
    hostname: str | None = None,
    enter: bool = False,
) -> Fit:
    """The function's part, once its plan is known: hostname (``hostname``, for
    a spare), the fs view for its uid, its code and scratch tmpfs at fixed paths
    (``bundle`` and ``scratch_dir``: their host paths), the template's
    rlimits (``pid``: the template as this process sees it), its Landlock
    ruleset.  ``enter``: join the template's namespaces first (a spare's,
    from the zygote)."""
    # The template's mount table, opened while ``pid`` names it in the /proc we see
    # (a fitter that joins a spare's namespaces is in none of its pids).
    try:
        mountinfo = os.open(f"/proc/{pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        mountinfo = -1
    try:
        return _fit_function(plan, bundle, scratch_dir, unshared, pid, hostname, enter, mountinfo)
    finally:
        if mountinfo >= 0:
            os.close(mountinfo)


def _fit_function(
    plan: Any, bundle: str, scratch_dir: str, unshared: int, pid: int, hostname: str | None, enter: bool, mountinfo: int
) -> Fit:
    from spanfaas import sandbox
    from spanfaas.sandbox import _libc, fixedpaths, fsview, landlock, namespaces

    if enter:
        namespaces.enter_namespaces(pid, unshared)
    out: list[Protection] = []
    if hostname is not None:
        out.append(sandbox.set_hostname(hostname, unshared))
    if plan is None:
        return FitReport(protections=out, function=True), []
    plan = msgspec.convert(plan, SandboxPlan) if isinstance(plan, dict) else plan
    mounts = bool(unshared & _libc.CLONE_NEWNS)
    plan, uid, code_dir, scratch, bound = _place(plan, bundle, scratch_dir, mounts, out)
    if mounts:
        out.append(fsview.hide_other_mounts([*plan.ro_paths, *plan.rw_paths], mountinfo))
        out.append(namespaces.readonly_but(plan.rw_paths))
    applied = msgspec.structs.replace(plan, uid=uid, instance_memory_bytes=0)
    sandbox.set_rlimits(applied, pid)
    out.append(Protection("rlimits", True, "core=0, data per instance, nproc, nofile"))
    ruleset, built = landlock.landlock_ruleset(plan.ro_paths, plan.rw_paths)
    out.append(built)  # the template enforces it (or, when it has no fd, reports it inactive)
    report = FitReport(
        protections=out, function=True, uid=uid, plan=applied, code_dir=code_dir, scratch_dir=scratch, runtime_paths=bound
    )
    return report, [ruleset] if ruleset >= 0 else []


def _place(
    plan: SandboxPlan, bundle: str, scratch_dir: str, mounts: bool, out: list[Protection]
) -> tuple[SandboxPlan, int | None, str, str, bool]:
    """The code and scratch at fixed paths where possible (``sandbox/fixedpaths.py``),
    the interpreter reachable for the uid: the plan with the paths the function
    finds them at, its uid, where the code and scratch are ("": host paths), and
    whether its Python's trees are bound at theirs (``sandbox/runtimepaths.py``)."""
    from spanfaas.sandbox import fixedpaths, fsview, runtimepaths

    ro_others = [x for x in plan.ro_paths if x != bundle]
    rw_others = [x for x in plan.rw_paths if x != scratch_dir]
    trees = runtimepaths.TREES  # (the zygote's: empty where it kept the host names)
    # The code first (as root, the whole host in view), then the interpreter for
    # the uid (fsview), then the scratch tmpfs, owned by that uid.
    # The copy is charged to the fitter's cgroup (the runtime's), not the function's: joining the
    # function's memory cgroup first cost 10-13 ms per deploy on cgroup v1 (measured, bench/runtime.py
    # cold start), a quarter of the cold-start goal.  Capped at half the function's memory limit.
    size = min(fixedpaths.CODE_BYTES, plan.memory_bytes // 2) if plan.memory_bytes else fixedpaths.CODE_BYTES
    why_not = (
        (fixedpaths.clash([*ro_others, *rw_others]) or fixedpaths.place_code(bundle, trees, size)) if mounts else "no mount namespace"
    )
    code_dir = scratch = ""
    bound: tuple[str, ...] = ()
    if why_not:  # the host paths, as without fixed paths
        uid = _reachable_uid(plan.uid, [*plan.ro_paths, *plan.rw_paths], mounts, out)
    else:
        code_dir = fixedpaths.CODE
        bound = tuple(dict.fromkeys("/".join(fixed.split("/")[:3]) for _, fixed in trees))  # /var/lang, /var/runtime...
        if not plan.allow_exec:
            # Its Python is read at the fixed paths: nothing of the host's paths of those trees is put
            # in view for it (``fsview``), kept mounted or named.  A subprocess needs them: a venv's
            # interpreter is a symbolic link to the host's, and its pyvenv.cfg names the host's.
            ro_others = [x for x in ro_others if not runtimepaths.covers(trees, x)]
        uid = _reachable_uid(plan.uid, [*ro_others, *rw_others], mounts, out)
        why_not = fixedpaths.place_scratch(uid, _scratch_bytes(plan.memory_bytes))
        if not why_not:
            scratch = fixedpaths.SCRATCH
        elif uid is not None and fsview.blocking_ancestor(scratch_dir):
            out.append(Protection("uid", False, f"the scratch dir is not reachable for the function's uid: {why_not}"))
            uid = None
    if not why_not:
        python = f"; its Python at {', '.join(bound)}" if bound else ""
        out.append(Protection("fixed-paths", True, f"code (a read-only copy) at {code_dir}, scratch at {scratch}{python}"))
        out.append(Protection("scratch-tmpfs", True, f"scratch on a private tmpfs of {_scratch_bytes(plan.memory_bytes) >> 20} MiB"))
    else:
        where = f"code at {code_dir}, scratch at its host path" if code_dir else "code and scratch at their host paths"
        out.append(Protection("fixed-paths", False, f"{where}: {why_not}"))
        if mounts:
            out.append(_scratch_in_memory(scratch_dir, uid, plan.memory_bytes))
    plan = msgspec.structs.replace(
        plan,
        ro_paths=(code_dir, *bound, *ro_others) if code_dir else plan.ro_paths,
        rw_paths=(scratch, *rw_others) if scratch else plan.rw_paths,
    )
    return plan, uid, code_dir, scratch, bool(bound)


def _reachable_uid(uid: int | None, needed: list[str], mounts: bool, out: list[Protection]) -> int | None:
    """The uid to drop to, once the trees it ``needed`` (code, interpreter) are reachable for it."""
    from spanfaas.sandbox import fsview

    if uid is None:
        return None
    if not any(fsview.blocking_ancestor(x) for x in needed):
        return int(uid)
    if not mounts:
        out.append(Protection("uid", False, "the interpreter is not readable by other users and there is no mount namespace to expose it"))
        return None
    view = fsview.expose_paths(needed)
    out.append(view)
    if not view.active:
        out.append(Protection("uid", False, view.reason))
        return None
    return int(uid)


def _scratch_bytes(memory_bytes: int) -> int:
    """The scratch tmpfs's cap: the function's memory limit, at least 64 MiB."""
    return max(memory_bytes, 64 * 1024 * 1024)


def _scratch_in_memory(scratch_dir: str, uid: int | None, memory_bytes: int) -> Protection:
    """The scratch dir on a private tmpfs (in the template's mount namespace).

    A fresh dir per strict invocation costs 40-240 us to create on ext4 and
    3 us on tmpfs; the files also die with the namespace, and their pages
    are charged to the function's memory cgroup."""
    from spanfaas.sandbox import _libc

    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    size = _scratch_bytes(memory_bytes)
    try:
        _libc.mount("tmpfs", scratch_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={size}{owner}")
    except OSError as exc:
        return Protection("scratch-tmpfs", False, f"scratch stays on disk: {exc}")
    return Protection("scratch-tmpfs", True, f"scratch on a private tmpfs of {size >> 20} MiB")
