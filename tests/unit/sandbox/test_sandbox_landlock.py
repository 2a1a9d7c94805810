"""Landlock: the filesystem view and signal/socket scoping, for real."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spanfaas.sandbox import PreparedLayer, landlock_restrict


@pytest.fixture
def tree(tmp_path: Path, require: Callable[..., None]) -> Path:
    require("landlock")
    for d in ("code", "scratch", "scratch/a", "scratch/b", "sibling"):
        (tmp_path / d).mkdir()
    (tmp_path / "code" / "mod.py").write_text("x = 1\n")
    (tmp_path / "sibling" / "secret").write_text("secret\n")
    (tmp_path / "scratch" / "b" / "other").write_text("other instance\n")
    return tmp_path


def _try(fn: Callable[[], object]) -> str:
    try:
        fn()
        return "ok"
    except PermissionError:
        return "denied"
    except OSError as e:
        return f"{type(e).__name__}: {e}"


def _probes(t: Path) -> dict[str, str]:
    scratch = t / "scratch"

    def write(p: Path) -> None:
        p.write_text("w")

    def mkdir_rmdir() -> None:
        (scratch / "d").mkdir()
        (scratch / "d").rmdir()

    def truncate() -> None:
        write(scratch / "t")
        os.truncate(scratch / "t", 0)
        os.unlink(scratch / "t")

    def rename_in_scratch() -> None:
        (scratch / "f").write_text("f")
        os.rename(scratch / "f", scratch / "a" / "g")
        os.unlink(scratch / "a" / "g")

    return {
        "read_code": _try(lambda: (t / "code" / "mod.py").read_text()),
        "list_code": _try(lambda: os.listdir(t / "code")),
        "write_code": _try(lambda: write(t / "code" / "mod.py")),
        "create_in_code": _try(lambda: write(t / "code" / "new.py")),
        "read_sibling": _try(lambda: (t / "sibling" / "secret").read_text()),
        "list_sibling": _try(lambda: os.listdir(t / "sibling")),
        "shadow": _try(lambda: open("/etc/shadow").close()),
        "etc_passwd": _try(lambda: open("/etc/passwd").close()),
        "mkdir_rmdir_scratch": _try(mkdir_rmdir),
        "rename_scratch": _try(rename_in_scratch),
        "truncate_scratch": _try(truncate),
        "read_other_instance": _try(lambda: (scratch / "b" / "other").read_text()),
        "devnull": _try(lambda: open(os.devnull, "w").close()),
        "urandom": _try(lambda: open("/dev/urandom", "rb").read(8)),
    }


def _restricted(t: Path, ro: list[str], rw: list[str]) -> dict[str, Any]:
    applied = landlock_restrict(ro, rw)
    return {"active": applied.active, "reason": applied.reason, **_probes(t)}


def test_view_is_ro_code_and_rw_scratch(tree: Path, in_child: Callable[..., Any]) -> None:
    got = in_child(_restricted, tree, [str(tree / "code"), "/nonexistent/path"], [str(tree / "scratch")]).value
    assert got["active"], got["reason"]
    assert "skipped missing ['/nonexistent/path']" in got["reason"]
    assert got["read_code"] == got["list_code"] == "ok"
    assert got["write_code"] == got["create_in_code"] == "denied"
    assert got["read_sibling"] == got["list_sibling"] == "denied"
    assert got["shadow"] == got["etc_passwd"] == "denied"
    assert got["mkdir_rmdir_scratch"] == got["rename_scratch"] == got["truncate_scratch"] == "ok"
    assert got["devnull"] == got["urandom"] == "ok"


def _instance(t: Path, parent_pid: int) -> dict[str, Any]:
    applied = landlock_restrict([str(t / "code")], [str(t / "scratch" / "a")])
    return {
        "active": applied.active,
        "kill_template": _try(lambda: os.kill(parent_pid, 0)),
        "kill_host": _try(lambda: os.kill(1, 0)),
        "kill_self": _try(lambda: os.kill(os.getpid(), 0)),
        "write_own": _try(lambda: (t / "scratch" / "a" / "x").write_text("x")),
        **_probes(t),
    }


def _template(t: Path, run_in_child: Callable[..., Any]) -> dict[str, Any]:
    """A template layer, then an instance layer that may only write scratch/a."""
    landlock_restrict([str(t / "code")], [str(t / "scratch")])
    return run_in_child(_instance, t, os.getpid()).value  # type: ignore[no-any-return]


def test_instance_layer_narrows_and_scopes_signals(tree: Path, in_child: Callable[..., Any]) -> None:
    got = in_child(_template, tree, in_child).value
    assert got["active"]
    assert got["write_own"] == "ok"
    assert got["read_other_instance"] == "denied", "another instance's scratch dir"
    assert got["mkdir_rmdir_scratch"] == "denied", "the shared scratch root is no longer writable"
    assert got["read_code"] == "ok"
    assert got["kill_template"] == got["kill_host"] == "denied", "signals cannot leave the domain"
    assert got["kill_self"] == "ok"


def _prepared_instance(t: Path, parent_pid: int, layer: PreparedLayer, ruleset: int) -> dict[str, Any]:
    fds = list(layer._fds)
    layer.close()
    layer.enforce(ruleset)
    return {
        "kill_template": _try(lambda: os.kill(parent_pid, 0)),
        "kill_self": _try(lambda: os.kill(os.getpid(), 0)),
        "write_own": _try(lambda: (t / "scratch" / "a" / "x").write_text("x")),
        "fds_left": [fd for fd in fds if _is_open(fd)],
        **_probes(t),
    }


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _template_prepared(t: Path, run_in_child: Callable[..., Any]) -> dict[str, Any]:
    """A template layer; the instances' layer prepared once; two instances add it."""
    landlock_restrict([str(t / "code")], [str(t / "scratch")])
    layer = PreparedLayer([str(t / "code"), "/nonexistent/path"])
    fds = list(layer._fds)
    results = []
    for _ in range(2):  # built here, as a template does before each fork; enforced in the child
        ruleset = layer.ruleset([str(t / "scratch" / "a")])
        results.append(run_in_child(_prepared_instance, t, os.getpid(), layer, ruleset).value)
        os.close(ruleset)
    first, second = results
    return {"first": first, "second": second, "still_open_here": bool(fds) and all(_is_open(fd) for fd in fds)}


def test_a_prepared_layer_is_the_instance_layer(tree: Path, in_child: Callable[..., Any]) -> None:
    got = in_child(_template_prepared, tree, in_child).value
    assert got["still_open_here"], "the template keeps the prepared rules"
    for inst in (got["first"], got["second"]):
        assert inst["write_own"] == "ok"
        assert inst["read_other_instance"] == "denied", "another instance's scratch dir"
        assert inst["mkdir_rmdir_scratch"] == "denied", "the shared scratch root is no longer writable"
        assert inst["read_code"] == inst["list_code"] == "ok"
        assert inst["write_code"] == inst["read_sibling"] == inst["shadow"] == "denied"
        assert inst["devnull"] == inst["urandom"] == "ok"
        assert inst["kill_template"] == "denied", "signals cannot leave the domain"
        assert inst["kill_self"] == "ok"
        assert inst["fds_left"] == [], "the child closed the prepared rules' descriptors"


@pytest.fixture
def abstract_listener() -> Iterator[str]:
    name = f"\0spanfaas-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(name)
        s.listen()
        yield name


def _abstract_connect(name: str, restrict: bool) -> str:
    if restrict:
        landlock_restrict([], [])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        return _try(lambda: s.connect(name))


def test_abstract_unix_sockets_are_scoped(tree: Path, abstract_listener: str, in_child: Callable[..., Any]) -> None:
    assert in_child(_abstract_connect, abstract_listener, False).value == "ok"
    assert in_child(_abstract_connect, abstract_listener, True).value == "denied"


def _sleep_forever() -> None:
    try:
        time.sleep(30)
    finally:
        os._exit(0)


def test_outside_can_still_signal_in(tree: Path) -> None:
    """The runtime (outside every domain) must keep control of sandboxed processes."""
    pid = os.fork()
    if pid == 0:
        try:
            landlock_restrict([], [])
        finally:
            _sleep_forever()
    time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WTERMSIG(status) == signal.SIGKILL


def test_an_instances_ruleset_is_built_without_the_generic_syscall_wrapper(
    tree: Path, in_child: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template builds a ruleset before every instance's fork (~30 rules): through
    ``_libc.syscall`` (a name lookup and fresh C longs per call) that took ~78 µs of CPU
    per instance, ~48 bound.  The calls are bound once, their arguments converted."""
    from spanfaas.sandbox import landlock

    layer = PreparedLayer([str(tree / "code"), "/nonexistent/path"])

    def no_wrapper(name: str, *args: object) -> int:
        raise AssertionError(f"{name} went through _libc.syscall")

    monkeypatch.setattr(landlock._libc, "syscall", no_wrapper)
    with pytest.raises(FileNotFoundError):
        layer.ruleset([str(tree / "scratch" / "missing")])
    ruleset = layer.ruleset([str(tree / "scratch" / "a")])
    try:
        monkeypatch.undo()
        got = in_child(_prepared_instance, tree, os.getpid(), layer, ruleset).value
    finally:
        os.close(ruleset)
        layer.close()
    assert got["write_own"] == "ok" and got["read_code"] == "ok"
    assert got["read_other_instance"] == got["write_code"] == got["read_sibling"] == "denied"
