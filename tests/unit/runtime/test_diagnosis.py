"""What an invocation's error says: the limit it hit and the key that raises it."""

from __future__ import annotations

import os
import signal

from spanfaas.model import ErrorInfo, Protection, parse_manifest
from spanfaas.runtime import diagnosis

SPEC = parse_manifest('name = "f"\nhandler = "handler:handler"\n[resources]\nmemory = 64\n')
KILLED = int(signal.SIGKILL)  # a wait status: killed by SIGKILL
EXITED_3 = 3 << 8


def test_a_sigkill_the_oom_killer_counted_is_out_of_memory_with_the_key_to_raise() -> None:
    err = diagnosis.lost(KILLED, True, SPEC)
    assert err.kind == "oom" and "64 MiB" in err.message and "resources.memory" in err.message
    assert err.exit_status == -signal.SIGKILL


def test_other_deaths_are_crashes_that_say_how() -> None:
    assert diagnosis.lost(KILLED, False, SPEC).message == "the instance was killed by signal SIGKILL"
    assert os.WEXITSTATUS(EXITED_3) == 3
    exited = diagnosis.lost(EXITED_3, False, SPEC)
    assert exited.kind == "crashed" and exited.exit_status == 3 and "status 3" in exited.message
    assert "was lost" in diagnosis.lost(-1, True, SPEC).message  # no status: lost with the template


def test_a_memory_error_names_the_limit() -> None:
    err = diagnosis.explained(ErrorInfo(kind="oom", type="MemoryError"), SPEC, [])
    assert err.message.startswith("the function ran out of its 64 MiB memory limit")


def test_a_program_the_sandbox_refused_names_allow_subprocess_only_when_the_sandbox_did_it() -> None:
    err = ErrorInfo(
        kind="error",
        type="PermissionError",
        message="[Errno 1] Operation not permitted: 'ls'",
        traceback='  File "subprocess.py", line 1, in _execute_child\n',
    )
    hinted = diagnosis.explained(err, SPEC, [Protection("seccomp", True)])
    assert hinted.message.endswith("set allow_subprocess = true in spanfaas.toml")
    assert diagnosis.explained(err, SPEC, [Protection("seccomp", False)]) == err


def test_a_child_signalled_by_its_pid_where_seccomp_scopes_signals_says_how_else() -> None:
    """Without Landlock's signal scope an instance signals only itself and its group
    (``seccomp.InstanceGuard``): ``Popen.kill`` fails with EPERM, and the error says why."""
    err = ErrorInfo(
        kind="error", type="PermissionError", message="[Errno 1] Operation not permitted",
        traceback='  File "/usr/lib/python3.11/subprocess.py", line 2160, in send_signal\n    os.kill(self.pid, sig)\n',
    )  # fmt: skip
    guard = Protection("signal-scope", True, "seccomp (Landlock ABI 5 cannot scope signals): ... its own children by their pid too ...")
    hinted = diagnosis.explained(err, SPEC, [guard])
    assert hinted.message.startswith("[Errno 1] Operation not permitted; this host's Landlock cannot scope signals"), hinted
    assert "os.killpg(os.getpgrp(), sig)" in hinted.message
    scoped = Protection("signal-scope", True, "Landlock ABI 7 scopes signals: ...")
    assert diagnosis.explained(err, SPEC, [scoped]) == err
    # Allowed subprocesses, it signals its children by pid: a PermissionError there is not this.
    children = Protection("signal-scope", True, "seccomp (Landlock ABI 5 cannot scope signals): ... sibling instances stay reachable by their pid ...")
    assert diagnosis.explained(err, SPEC, [children]) == err
