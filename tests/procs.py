"""Process helpers shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (it has not ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


def marked(mark: str) -> list[str]:
    """The live processes whose environment holds ``mark`` (``"PID: cmdline"``).  Put the mark
    in PATH as a directory that does not exist: the runtime's zygotes get a clean environment
    but for PATH, and sessions of their own (a process group would not find them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark.encode() in environ and alive(int(entry)):
            found.append(f"{entry}: {cmdline}")
    return found
