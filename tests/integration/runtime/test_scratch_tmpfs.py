"""Without the sandbox, the runtime's scratch root is a tmpfs of its own (where it may mount).

A fresh scratch dir per strict call on the data dir's file system costs an inode
allocation each (on an ext4 without a journal, a scan past every inode deleted
in the last minute); on a tmpfs, a few µs.  The tmpfs is capped
(``runtime.scratch_size``): a function that fills it gets ENOSPC, the host's
memory does not fill, and the next call starts empty again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from spanfaas.config import RuntimeSettings, Settings
from spanfaas.runtime import LocalRuntime
from spanfaas.sandbox import _libc

from .conftest import Harness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

FILL = """
import os
import sys

def handler(event, ctx):
    before = sorted(os.listdir("."))
    if event == "fill":
        with open("big", "wb") as f:
            f.write(b"x" * (3 * 1024 * 1024))
    return before
"""


def mounted_fs(path: Path) -> str | None:
    """The file system type mounted at ``path`` (None: not a mount point)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _libc.unescape_mount_field(fields[4]) == str(path):
                return fields[fields.index("-") + 1]
    return None


def settings(tmp: Path, size: int = 2) -> Settings:
    return Settings(data_dir=str(tmp), runtime=RuntimeSettings(sandbox=False, cgroup_root="spanfaas-test", scratch_size=size))


async def test_scratch_on_its_own_capped_tmpfs_full_is_enospc_and_the_next_call_starts_empty(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    rt = LocalRuntime(settings(tmp_path, size=2))
    await rt.start()
    try:
        assert mounted_fs(rt.scratch_root) == "tmpfs"
        assert os.statvfs(rt.scratch_root).f_blocks * os.statvfs(rt.scratch_root).f_frsize == 2 * 1024 * 1024
        h = Harness(rt, tmp_path / "functions")
        await h.deploy("fill", FILL, 'isolation = "strict"\n')
        full = await h.invoke("fill", b'"fill"')
        assert full.error is not None and full.error.type == "OSError"
        assert "No space left on device" in full.error.message
        after = await h.invoke("fill", b'"look"')
        assert after.error is None and after.output == b"[]", "the next call sees none of the last one's files"
    finally:
        await rt.close()
    assert mounted_fs(rt.scratch_root) is None
    assert not rt.scratch_root.exists()


async def test_start_unmounts_and_removes_the_scratch_tmpfs_of_a_runtime_that_died(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    stale = tmp_path / "scratch" / f"rt-{dead}-1"
    stale.mkdir(parents=True)
    _libc.mount("tmpfs", str(stale), "tmpfs", 0, "size=1m")
    (stale / "left").write_text("x")
    rt = LocalRuntime(settings(tmp_path))
    try:
        await rt.start()
        assert mounted_fs(stale) is None
        assert not stale.exists()
    finally:
        await rt.close()
        if mounted_fs(stale) is not None:
            _libc.umount2(str(stale), 2)


async def test_a_start_that_fails_after_mounting_unmounts_the_scratch_tmpfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The zygote cannot start (no interpreter at sys.executable): the tmpfs was mounted by
    # then, and a runtime that never started has nothing for close() to stop.
    tmp_path.chmod(0o755)
    rt = LocalRuntime(settings(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(FileNotFoundError):
        await rt.start()
    monkeypatch.undo()
    assert not rt.started
    assert mounted_fs(rt.scratch_root) is None
    assert not rt.scratch_root.exists()
    await rt.close()  # (nothing to do: no error)

