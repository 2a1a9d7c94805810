"""Fixtures for sandbox tests: run a mechanism for real in a forked child.

Every sandbox call changes the calling process for good, so each test
applies it in a child, tries the forbidden thing there, and sends the
outcome back over a pipe.  The child always leaves through ``os._exit`` so
pytest never runs twice.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest

from spanfaas.sandbox import cleanup_cgroups, probe
from spanfaas.sandbox.cgroups import hierarchies


class Child(NamedTuple):
    """What a forked child returned (None if it died first) and its wait status."""

    value: Any
    status: int

    @property
    def signal(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def run_in_child(fn: Callable[..., Any], *args: Any, timeout: float = 5.0) -> Child:
    """Fork, run ``fn(*args)`` in the child, and return its pickled result.

    An exception in the child fails the test with the child's traceback.
    A child that outlives ``timeout`` is killed and fails the test.  The
    parent stops reading when the child has exited, not at EOF: processes
    the child forked (a fork bomb) may hold the pipe open.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            try:
                result: tuple[str, Any] = ("ok", fn(*args))
            except BaseException as e:  # report anything, including SystemExit, to the parent
                result = ("err", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            data = memoryview(pickle.dumps(result))
            while data:
                data = data[os.write(w, data) :]
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(w)
    os.set_blocking(r, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    status: int | None = None
    try:
        while status is None:
            select.select([r], [], [], 0.005)
            _drain(r, chunks)
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"child {pid} did not finish within {timeout} s")
        _drain(r, chunks)
    finally:
        os.close(r)
    if not chunks:
        return Child(None, status)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        pytest.fail(f"child raised:\n{value}")
    return Child(value, status)


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            return
        chunks.append(chunk)


@pytest.fixture
def in_child() -> Callable[..., Child]:
    return run_in_child


def _require(*names: str) -> None:
    """Skip the test, with probe()'s reason, unless every mechanism is available."""
    by_name = {p.name: p for p in probe()}
    for name in names:
        p = by_name[name]
        if not p.active:
            pytest.skip(f"{name} unavailable on this host: {p.reason}")


@pytest.fixture
def require() -> Callable[..., None]:
    """``require("landlock", ...)``: skip with probe()'s reason if unavailable."""
    return _require


def _cgroup_dirs(root: str) -> list[str]:
    out = []
    for mount in sorted({h.mount for h in hierarchies().values()}):
        top = os.path.join(mount, root)
        if os.path.isdir(top):
            out.append(top)
            out += [os.path.join(top, d) for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))]
    return out


@pytest.fixture
def cgroup_root() -> Iterator[str]:
    """A unique cgroup root for one test; asserts the test left no cgroup behind."""
    _require("cgroup-memory", "cgroup-cpu", "cgroup-pids")
    root = f"spanfaas-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield root
    leftovers = [d for d in _cgroup_dirs(root) if os.path.basename(d) != root]
    cleanup_cgroups(root)
    assert not _cgroup_dirs(root), "cleanup_cgroups left directories"
    assert not leftovers, f"test left cgroups behind: {leftovers}"
