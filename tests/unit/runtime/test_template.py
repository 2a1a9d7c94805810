"""The template's bookkeeping of its instances, without a runtime."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from spanfaas.runtime import protocol as p
from spanfaas.runtime.template import Template


_REQUEST = p.SpawnTemplate(
    key="f-1", name="f", bundle_path="/nonexistent", module="handler", function="handler", env={},
    scratch_dir="/nonexistent", isolation="strict", concurrency=1, instance_memory=0, sandbox=None, cgroup=[],
)  # fmt: skip


def _state(pid: int) -> str:
    """A process's state letter (``Z``: a zombie, exited and not yet reaped); "" once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except FileNotFoundError:
        return ""


def test_an_instances_group_is_killed_while_its_pid_is_still_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The group of an exited instance was killed by its number after the instance was reaped:
    by then the number may lead another process's group.  It is killed while the instance is
    a zombie, whose pid no other process can take, and reaped after."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # as an instance does: it leads a group
        os._exit(3)
    killed: list[tuple[int, str]] = []
    real_killpg = os.killpg

    def killpg(pgid: int, sig: int) -> None:
        killed.append((pgid, _state(pgid)))
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", killpg)
    tpl = Template.__new__(Template)  # (no runtime, no sandbox: only what reap uses)
    tpl.children, tpl.chan, tpl.reaper, tpl.sweeping = {pid: 1}, ours, False, False
    tpl.req = msgspec.structs.replace(_REQUEST, scratch_dir=str(tmp_path))
    tpl.scratch_dir = tpl.req.scratch_dir  # (the host path: no fitter placed it)
    tpl.scratch_paths = {1: str(tmp_path / "i1-0")}
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # it has exited (left unreaped)
        tpl.reap()
        assert killed == [(pid, "Z")], "its group was signalled by number once the pid was free"
        assert _state(pid) == "" and tpl.children == {}
        got = p.recv_msg(theirs, msgspec.msgpack.Decoder(p.TemplateEvent))
        assert got is not None
        msg, _ = got
        assert isinstance(msg, p.InstanceExited) and msg.seq == 1 and os.WEXITSTATUS(msg.status) == 3
    finally:
        ours.close()
        theirs.close()
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_an_instances_scratch_dir_is_made_before_its_fork_without_a_sandbox_too(tmp_path: Path) -> None:
    """Instances made their own scratch dirs (without the sandbox) right after the fork: each
    mkdir contended with the others' and with the template's rmdir on the one parent dir
    (~0.2 ms of CPU each under load).  The template makes each, one after the other, with
    the rest an instance needs before its fork, as it does for sandboxed ones."""
    tpl = Template.__new__(Template)  # (no runtime, no sandbox: only what _make_instance uses)
    tpl.req = msgspec.structs.replace(_REQUEST, scratch_dir=str(tmp_path))
    tpl.scratch_dir = tpl.req.scratch_dir  # (the host path: no fitter placed it)
    tpl.seq, tpl.layer, tpl.scratch_paths = 0, None, {}
    prep = tpl._make_instance()
    try:
        scratch = Path(prep.scratch)
        assert scratch.parent == tmp_path and scratch.is_dir()
        assert scratch.stat().st_mode & 0o777 == 0o700
        assert not any(scratch.iterdir())
    finally:
        prep.ours.close()
        prep.theirs.close()
        os.close(prep.logs)


def test_an_instances_tmpdir_and_home_are_set_without_setenv(tmp_path: Path) -> None:
    """In a fresh instance, the first setenv() (os.putenv) touched ~20 pages of the
    template's malloc heap (its allocation, and glibc's tree of the values it has
    set): ~40 µs and 20 copy-on-write faults.  putenv(3) with a string made before
    the fork stores a pointer.  C code, subprocesses and os.environ all see it."""
    import ctypes

    from spanfaas.runtime import template

    scratch = os.fsencode(tmp_path / "i1")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the environment of a process of its own)
        code = 1
        try:
            os.putenv = None  # type: ignore[assignment]  # not through setenv()
            template._scratch_env(scratch, (b"TMPDIR=" + scratch, b"HOME=" + scratch))
            getenv = ctypes.CDLL(None).getenv
            getenv.restype = ctypes.c_char_p
            seen = (getenv(b"TMPDIR"), getenv(b"HOME"), os.environb[b"TMPDIR"], os.environb[b"HOME"])
            os.write(w, b"\n".join(seen))
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert got.split(b"\n") == [scratch] * 4


def test_warm_sandbox_builds_the_signal_scope_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Landlock scopes signals (ABI 6+) the zygote builds, once, the signal-scope
    Protection its templates report (each building its own un-shared pages of every one of
    them); where it cannot (a lowered ABI) there is none, and templates take the path of
    the seccomp signal guard."""
    from spanfaas.runtime import template
    from spanfaas.sandbox.landlock import TEST_ABI_ENV, abi_version
    from spanfaas.sandbox.seccomp import signal_protection

    monkeypatch.setattr(template, "_SCOPED", None)  # (restored after the test)
    monkeypatch.setenv(TEST_ABI_ENV, "5")
    template.warm_sandbox()
    assert template._SCOPED is None
    monkeypatch.delenv(TEST_ABI_ENV)
    template.warm_sandbox()
    abi = abi_version()
    if abi < 6:
        assert template._SCOPED is None
    else:
        assert template._SCOPED == signal_protection(abi, True, True, False)
        assert template._SCOPED.active and template._SCOPED.name == "signal-scope"


def test_the_descriptors_an_instance_closes_go_as_runs_of_consecutive_numbers() -> None:
    tpl = Template.__new__(Template)
    tpl.chan, other = socket.socketpair()
    try:
        tpl.wake_r, tpl.wake_w, tpl.lifeline = 40, 41, -1
        preps = [SimpleNamespace(ours_fd=50 + 3 * i, theirs_fd=51 + 3 * i, logs=52 + 3 * i, ruleset=-1) for i in range(3)]
        preps[2].ruleset = 70
        runs = tpl._inherited(preps)  # type: ignore[arg-type]
        chan = tpl.chan.fileno()  # (a low number: below 40)
    finally:
        tpl.chan.close()
        other.close()
    assert runs == ((chan, chan + 1), (40, 42), (50, 59), (70, 71))


def test_the_sweep_leaves_only_the_live_instances_dirs_and_empties_those_whose_call_has_not_started(tmp_path: Path) -> None:
    """Without Landlock a strict call may write anywhere in the scratch tmpfs: the template's
    sweep removes what is not a live instance's dir (a file, a dir named as an instance's, a
    link in place of one) and empties the dirs it can lock (no call runs there), not the others."""
    import fcntl

    root = tmp_path / "scratch"
    for d in ("i1-idle", "i2-busy", "i9-forged/sub"):
        (root / d).mkdir(parents=True)
    for f in ("left", "i1-idle/left", "i2-busy/own", "i9-forged/sub/left"):
        (root / f).write_text("x")
    (root / "i3-link").symlink_to(root / "i9-forged")
    tpl = Template.__new__(Template)  # (only what sweep uses)
    tpl.scratch_dir = str(root)
    tpl.scratch_paths = {1: str(root / "i1-idle"), 2: str(root / "i2-busy"), 3: str(root / "i3-link")}
    busy = os.open(root / "i2-busy", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(busy, fcntl.LOCK_EX)  # as its instance does when its call starts (_empty_own)
        tpl.sweep()
    finally:
        os.close(busy)
    assert sorted(p.name for p in root.iterdir()) == ["i1-idle", "i2-busy"]
    assert list((root / "i1-idle").iterdir()) == []
    assert [p.name for p in (root / "i2-busy").iterdir()] == ["own"]
