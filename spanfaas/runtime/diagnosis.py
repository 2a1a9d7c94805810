"""What an invocation's error says: why it failed, and what to change when a limit caused it.

Pure: from the error an instance reported (or how it died) and the
function's manifest, an ErrorInfo whose message names the limit it hit and
the key of ``spanfaas.toml`` that raises it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

import msgspec

from spanfaas.model import ErrorInfo, FunctionSpec, Protection

__all__ = ["died_importing", "explained", "lost"]

_EXEC_FRAMES = ("_execute_child", "os.exec", "posix_spawn", "os.spawn")
"""In a traceback: the error came from starting a program (subprocess, os.popen, os.exec*)."""
_NO_NETWORK = ("Network is unreachable", "Temporary failure in name resolution", "Name or service not known")
"""In an error's message: a connection or a name lookup found no network."""
_SOCKET_FRAMES = ("_socket.socket.__init__(", "_socket.socketpair(")
"""In a traceback: the error came from creating a socket (``socket.socket(AF_UNIX)``, ``AF_VSOCK`` or a uevent netlink
one, and a datagram ``socket.socketpair``, are refused without network)."""
_SIGNAL_FRAMES = ("in send_signal", "in _send_signal", "os.kill(", "os.killpg(")
"""In a traceback: the error came from signalling a process (``Popen.kill``/``terminate``, multiprocessing's, ``os.kill``)."""


def explained(error: ErrorInfo, spec: FunctionSpec, protections: Iterable[Protection]) -> ErrorInfo:
    """The handler's error, with what to change in the manifest when a limit of it caused it
    (``protections``: the runtime's, as the host allows them)."""
    if error.kind == "oom":
        return _out_of_memory(error, spec)
    hint = _sandbox_hint(error, spec, protections) if error.kind == "error" else None
    return error if hint is None else msgspec.structs.replace(error, message=f"{error.message}; {hint}")


def _sandbox_hint(error: ErrorInfo, spec: FunctionSpec, protections: Iterable[Protection]) -> str | None:
    """What the sandbox denied, by the manifest's defaults, in an error the handler raised
    (seen by its message and where it was raised): say which key allows it."""
    message = error.message
    active = {x.name for x in protections if x.active}
    if (
        not spec.allow_subprocess
        and error.type == "PermissionError"
        and message.startswith(("[Errno 1]", "[Errno 13]"))
        and any(where in (error.traceback or "") for where in _EXEC_FRAMES)
        and active & {"seccomp", "landlock"}
    ):
        return "running programs is off for this function: set allow_subprocess = true in spanfaas.toml"
    if spec.network == "none" and "net-namespace" in active and any(m in message for m in _NO_NETWORK):
        return 'the function has no network (network = "none", the default): set network = "host" in spanfaas.toml to reach other hosts'
    if (
        spec.network == "none"
        and error.type == "PermissionError"
        and message.startswith("[Errno 1]")
        and any(where in (error.traceback or "") for where in _SOCKET_FRAMES)
        and "seccomp" in active
    ):
        return ('unix, vsock and uevent netlink sockets are off for this function (network = "none", the default: they '
                'reach the host\'s services, a virtual machine\'s hypervisor, the host\'s device events); set network = "host" '
                'in spanfaas.toml to use them')  # fmt: skip
    if (
        error.type == "PermissionError"
        and message.startswith("[Errno 1]")
        and any(where in (error.traceback or "") for where in _SIGNAL_FRAMES)
        and any(
            x.name == "signal-scope" and x.active and x.reason.startswith("seccomp (") and "children by their pid" in x.reason
            for x in protections
        )
    ):
        return ("this host's Landlock cannot scope signals, so seccomp lets an instance signal only itself and its "
                "process group, not another process by its pid, its own children included: signal those through "
                "the group (os.killpg(os.getpgrp(), sig) reaches the instance too), or let them end with the call; "
                "a function with allow_subprocess = true may signal its children by pid here (and its instances "
                "each other)")  # fmt: skip
    return None


def _out_of_memory(error: ErrorInfo, spec: FunctionSpec) -> ErrorInfo:
    """A MemoryError in the instance, with the limit it hit and where to raise it."""
    limit = f"the function ran out of its {spec.resources.memory} MiB memory limit (raise resources.memory in spanfaas.toml)"
    return msgspec.structs.replace(error, message=f"{error.message}; {limit}" if error.message else limit)


def lost(status: int, oom: bool, spec: FunctionSpec) -> ErrorInfo:
    """An instance went mid-call: what its exit ``status`` (-1: unknown, it was lost
    with its template or the runtime) says, ``oom`` if the cgroup's OOM killer
    counted its SIGKILL."""
    signum = os.WTERMSIG(status) if status >= 0 and os.WIFSIGNALED(status) else 0
    if signum == signal.SIGKILL and oom:
        return ErrorInfo(kind="oom", message=f"the function used more than its {spec.resources.memory} MiB memory limit and was stopped (raise resources.memory in spanfaas.toml)", exit_status=-signum)
    if status < 0:
        return ErrorInfo(kind="crashed", message="the instance was lost (its template or the runtime stopped it)")
    if signum:
        name = signal.Signals(signum).name
        return ErrorInfo(kind="crashed", message=f"the instance was killed by signal {name}", exit_status=-signum)
    code = os.WEXITSTATUS(status)
    return ErrorInfo(kind="crashed", message=f"the instance exited with status {code} before answering", exit_status=code)


def died_importing(status: int, oom: bool, spec: FunctionSpec) -> str:
    """The template exited while it imported the function's code, without an exception to
    report: what its exit ``status`` (-1: unknown) says, ``oom`` if the cgroup's OOM killer
    counted its SIGKILL."""
    signum = os.WTERMSIG(status) if status >= 0 and os.WIFSIGNALED(status) else 0
    if signum == signal.SIGKILL and oom:
        return (f"the function's code used more than its {spec.resources.memory} MiB memory limit while being imported "
                "and was stopped (raise resources.memory in spanfaas.toml)")  # fmt: skip
    if signum:
        what = f"was killed by signal {signal.Signals(signum).name}"
    elif status >= 0:
        what = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        what = "exited (its status is unknown)"
    return (f"the function's code {what} while being imported; a module must not exit or crash "
            "when imported: run that code in the handler, or fix the crash it hits")  # fmt: skip
