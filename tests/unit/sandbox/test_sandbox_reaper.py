"""The reaper: a static ELF of one page, pid 1 of a pid namespace, that only waits.

Run for real in a forked child that unshares a pid namespace: the reaper as its
pid 1, a "template" as pid 2 beside it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spanfaas.sandbox import _libc, reaper


def test_each_supported_architecture_has_a_small_static_program() -> None:
    for arch in reaper.CODE:
        image = reaper.elf(arch)
        assert image is not None and image[:4] == b"\x7fELF" and len(image) < 4096
    assert reaper.elf("sparc64") is None


def _children_of(pid: int) -> list[tuple[int, bytes]]:
    """(pid, state) of each process whose parent is ``pid`` (host pids)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split() if entry.isdigit() else []
        except OSError:
            continue
        if fields and int(fields[1]) == pid:
            out.append((int(entry), fields[0]))
    return out


def _template_beside_the_reaper(how: str) -> dict[str, Any]:
    """As the zygote does: the reaper as pid 1, the template as pid 2 holding the lifeline."""
    program = reaper.program()
    if program < 0:
        return {"skip": f"no reaper for {_libc.ARCH}"}
    _libc.unshare(_libc.CLONE_NEWPID)
    life_r, life_w = reaper.lifeline()
    pid1 = os.fork()
    if pid1 == 0:
        reaper.become(program, life_r)
    # One pipe each: on a shared one, the template could take the byte meant for the
    # orphan, which then held the lifeline open for ever (a reaper that never ends).
    go_r, go_w = os.pipe()  # the orphan's
    end_r, end_w = os.pipe()  # the template's
    template = os.fork()
    if template == 0:
        os.close(life_r)
        os.close(go_w)
        os.close(end_w)
        child = os.fork()
        if child == 0:
            if os.fork() == 0:  # an orphan once its parent is gone: re-parented to pid 1
                os.read(go_r, 1)  # (until the test has seen it there)
                os._exit(0)
            os._exit(0)
        os.waitpid(child, 0)
        os.read(end_r, 1)  # (until the orphan is gone)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os.abort()
    os.close(go_r)
    os.close(end_r)
    os.close(life_r)
    os.close(life_w)  # the template's is the last write end
    while not _children_of(pid1):  # the orphan came to the reaper
        time.sleep(0.001)
    os.write(go_w, b"x")  # the orphan exits: the kernel reaps it (SIGCHLD ignored)
    while _children_of(pid1):
        time.sleep(0.001)  # (a zombie left there would keep the test here until its timeout)
    state = Path(f"/proc/{pid1}/status").read_text()
    os.write(end_w, b"x")  # the template ends itself
    _, status = os.waitpid(template, 0)
    _, pid1_status = os.waitpid(pid1, 0)  # ends by itself once the template is gone
    return {
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "sleeping": "State:\tS" in state,
        "nspid": state.split("\nNSpid:", 1)[1].split("\n", 1)[0].split()[-1],
        "reaper exit": os.WEXITSTATUS(pid1_status) if os.WIFEXITED(pid1_status) else -1,
    }


@pytest.mark.parametrize(("how", "expected"), [("kill", signal.SIGKILL), ("abort", signal.SIGABRT)])
def test_beside_the_reaper_a_template_dies_of_the_signal_it_sends_itself(
    in_child: Callable[..., Any], require: Callable[..., None], how: str, expected: int
) -> None:
    """As pid 1 a template survived its own SIGKILL and its abort() ended as SIGSEGV.  The
    reaper reaps the orphan that comes to it, and ends by itself once the template is gone."""
    require("pid-namespace")
    got = in_child(_template_beside_the_reaper, how).value
    if "skip" in got:
        pytest.skip(got["skip"])
    assert got == {"signal": expected, "sleeping": True, "nspid": "1", "reaper exit": 0}
