"""Process helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (it has not ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"
