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


def _template_beside_the_reaper(how: str) -> dict[str, Any]:
    program = reaper.program()
    if program < 0:
        return {"skip": f"no reaper for {_libc.ARCH}"}
    _libc.unshare(_libc.CLONE_NEWPID)
    pid1 = os.fork()
    if pid1 == 0:
        reaper.become(program)
    template = os.fork()
    if template == 0:
        if os.fork() == 0:  # an orphan once its parent is gone: re-parented to pid 1
            time.sleep(0.2)
            os._exit(0)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os.abort()
    _, status = os.waitpid(template, 0)
    time.sleep(0.5)  # the orphan has exited
    zombies = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if stat and stat.rsplit(b")", 1)[1].split()[0] == b"Z" and int(stat.rsplit(b")", 1)[1].split()[1]) == pid1:
            zombies.append(int(entry))
    state = Path(f"/proc/{pid1}/status").read_text()
    os.kill(pid1, signal.SIGKILL)  # from outside its namespace: the only way it ends
    _, pid1_status = os.waitpid(pid1, 0)
    return {
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "sleeping": "State:\tS" in state,
        "nspid": state.split("\nNSpid:", 1)[1].split("\n", 1)[0].split()[-1],
        "zombies": zombies,
        "killed": os.WIFSIGNALED(pid1_status) and os.WTERMSIG(pid1_status) == signal.SIGKILL,
    }


@pytest.mark.parametrize(("how", "expected"), [("kill", signal.SIGKILL), ("abort", signal.SIGABRT)])
def test_beside_the_reaper_a_template_dies_of_the_signal_it_sends_itself_and_orphans_are_reaped(
    in_child: Callable[..., Any], require: Callable[..., None], how: str, expected: int
) -> None:
    """As pid 1 a template survived its own SIGKILL and its abort() ended as SIGSEGV."""
    require("pid-namespace")
    got = in_child(_template_beside_the_reaper, how).value
    if "skip" in got:
        pytest.skip(got["skip"])
    assert got == {"signal": expected, "sleeping": True, "nspid": "1", "zombies": [], "killed": True}
