"""The fitter: a throwaway process that fits a template's sandbox around it.

On Python 3.11 every object a process touches has its reference count
written, so every page of Python code a template runs after its fork
becomes that template's own memory (copy-on-write): the sandbox set-up
used to cost each idle function ~0.5 MiB.  Most of that set-up is not
about the template's process at all but about its namespaces and cgroup,
which other processes can change for it.  The zygote forks a fitter
beside each template (inside the template's new namespaces), and the fitter:

* joins the template to its cgroup (a cgroup v1 join can wait 5-20 ms),
  and itself to the function's memory cgroup (free right after:
  ``join_memory_cgroup``), so that the copy of the code it makes below
  is charged to the function;
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

A spare's fitter (``zygote.py``) does the shell's part ahead of any
deploy, then forks a successor that waits, in the spare's namespaces and
memory cgroup, for the zygote's ``FitRequest`` (``wait_for_function``):
at deploy, the function's part, with no fork, namespace or cgroup join.
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

__all__ = [
    "Fit", "FitReport", "FitRequest", "channel", "fit_function", "fit_shell", "join_memory_cgroup", "order", "read_report", "run",
    "wait_for_function", "warm",
]

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


def run(report_fd: int, work: Callable[[], Fit], then: Callable[[], object] | None = None) -> NoReturn:
    """In the fitter: do ``work``, send its report on the socket ``report_fd``, exit.
    ``then``: run once the report is sent (and says no error), before the exit."""
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
        sock.close()
        if then is not None and not report.error:
            then()
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
    _request_decoder.decode(_request_encoder.encode(FitRequest(sandbox={}, bundle_path="/", scratch_dir="/", name="warm")))


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


def join_memory_cgroup(cgroup: Sequence[str], procs: Sequence[int] | None = None) -> None:
    """Move this process into the function's memory cgroup (``cgroup``: its dirs, one per
    hierarchy; ``procs``: their cgroup.procs, open, else opened here), so that the copy of
    its code at ``/var/task`` -- tmpfs pages, charged to the cgroup of the process that
    writes them, for as long as they live -- counts against the function's memory limit,
    not the runtime's.  Only memory: nothing else the fitter does stays behind.

    Cheap right after ``join_cgroups`` (10 us, measured): on cgroup v1 a join waits for an
    RCU grace period (cgroup_threadgroup_rwsem, 5-13 ms), which one join right after
    another shares; alone, on a cold start, it cost 10-13 ms (commit 13ac09f)."""
    for i, d in enumerate(cgroup):
        if not os.path.exists(os.path.join(d, "memory.stat")):
            continue
        try:
            if procs is not None and i < len(procs):
                os.write(procs[i], b"0")  # (0: the writer)
            else:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write("0")
        except OSError:
            traceback.print_exc()  # charged to the runtime, as before; the template starts all the same


def fit_shell(unshared: int, network: str, name: str | None, procs: Sequence[int], pid: int, cgroup: Sequence[str] = ()) -> Fit:
    """The shell's part: cgroup, then namespaces (``name``: hostname, when known).
    ``cgroup``: the dirs ``procs`` were opened in; this fitter joins their memory cgroup
    too (``join_memory_cgroup``), for the function's part it does next (or, in a spare,
    its successor: ``wait_for_function``)."""
    error = join_cgroups(procs, pid)
    if error:
        return FitReport(error=error), []
    join_memory_cgroup(cgroup, procs)
    if not unshared:
        return FitReport(), []
    from spanfaas import sandbox

    return FitReport(protections=sandbox.fit_namespaces(unshared, name, network)), []


class FitRequest(msgspec.Struct, kw_only=True):
    """The zygote to a spare's waiting fitter (``wait_for_function``): fit the spare to this function."""

    sandbox: Any
    """Its ``SandboxPlan`` as builtins (``SpawnTemplate.sandbox``)."""
    bundle_path: str
    scratch_dir: str
    name: str


_request_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(FitRequest)


def order(sock: socket.socket, request: FitRequest, report_fd: int) -> bool:
    """In the zygote: hand ``request`` and the template's report channel (``report_fd``, the
    fitter's end) to a spare's waiting fitter on ``sock``; False if it is gone."""
    try:
        socket.send_fds(sock, [_request_encoder.encode(request)], [report_fd])
    except OSError:
        return False
    return True


def wait_for_function(sock_fd: int, unshared: int, pid: int, close: Callable[[], object]) -> None:
    """In a spare's fitter, its shell's part done and reported: fork its *successor*, which
    stays in the spare's namespaces and the function's memory cgroup (``fit_shell`` joined
    them) and waits on ``sock_fd`` for the zygote's ``FitRequest``, then does the function's
    part (``fit_function``: the copy of its code is charged to the function's memory
    cgroup, with no cgroup join on the cold start) and reports to the template on the
    channel that came with it.  We return and exit: the zygote reaps us and reports the
    spare ready, as before.  ``pid``: the shell as we see it; ``close``: drops the fds
    the successor must not hold (the zygote's, the reaper's lifeline)."""
    from spanfaas.runtime import forking

    try:
        child = forking.forker.fork()
    except OSError:
        traceback.print_exc()  # the zygote forks a fitter at deploy instead (``order`` fails)
        child = -1
    if child != 0:
        os.close(sock_fd)
        return
    try:
        close()
        sock = _socket.socket(fileno=sock_fd)
        got = recv_msg_lean(sock, _request_decoder)
        sock.close()
        if got is None:
            os._exit(0)  # the zygote is gone or the spare was not used
        request, fds = got
        if len(fds) != 1:
            raise RuntimeError(f"a spare's fitter expected one report channel, got {len(fds)} fds")
    except BaseException:
        traceback.print_exc()  # the template reads EOF on its report channel and fails its start
        os._exit(70)
    run(fds[0], lambda: fit_function(request.sandbox, request.bundle_path, request.scratch_dir, unshared, pid, hostname=request.name))


def fit_function(
    plan: Any,
    bundle: str,
    scratch_dir: str,
    unshared: int,
    pid: int,
    *,
    hostname: str | None = None,
    enter: bool = False,
    cgroup: Sequence[str] = (),
) -> Fit:
    """The function's part, once its plan is known: hostname (``hostname``, for
    a spare), the fs view for its uid, its code and scratch tmpfs at fixed paths
    (``bundle`` and ``scratch_dir``: their host paths), the template's
    rlimits (``pid``: the template as this process sees it), its Landlock
    ruleset.  ``enter``: join the template's namespaces first (a spare's,
    from the zygote).  ``cgroup``: the function's cgroup dirs, whose memory
    cgroup we join first (a spare's fitter forked at deploy, when its waiting
    one was gone: ``join_memory_cgroup``, 10-13 ms on cgroup v1)."""
    join_memory_cgroup(cgroup)
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
    # The copy is charged to the function's memory cgroup, which this fitter is in (``fit_shell``
    # joined it right after the shell, for free; in a spare, before any deploy); capped at half
    # the function's memory limit.
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
