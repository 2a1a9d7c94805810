"""The runtime's scratch root: on disk or on a tmpfs of its own, and the sweep of dead runtimes'."""

from __future__ import annotations

import os
from pathlib import Path

from spanfaas.runtime import scratch


def test_on_disk_without_a_size_and_removed_with_what_it_holds(tmp_path: Path) -> None:
    root = tmp_path / "scratch" / "rt-1-1"
    assert scratch.make_root(root, tmpfs_bytes=None) is False
    assert root.stat().st_mode & 0o777 == 0o711
    (root / "fn" / "i1").mkdir(parents=True)
    (root / "fn" / "i1" / "f").write_text("x")
    scratch.remove_root(root)
    assert not root.exists()


def test_the_sweep_removes_dead_runtimes_roots_only(tmp_path: Path) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    names = [f"rt-{dead}-1", f"rt-{os.getpid()}-1", "rt-x-1", "other"]
    for name in names:
        (tmp_path / name / "fn").mkdir(parents=True)
    scratch.remove_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_stale_mounts_are_dead_runtimes_scratch_tmpfs_anywhere(tmp_path: Path) -> None:
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    me = os.getpid()
    lines = [
        f"100 27 0:60 / /srv/a\\040b/scratch/rt-{dead}-1 rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k",  # (a space, escaped)
        f"101 27 0:61 / /srv/c/scratch/rt-{me}-1 rw - tmpfs tmpfs rw",  # alive: its runtime's
        f"102 27 0:62 / /srv/d/scratch/rt-{dead}-2 rw - ext4 /dev/sda1 rw",  # not a tmpfs
        f"103 27 0:63 / /srv/e/other/rt-{dead}-3 rw - tmpfs tmpfs rw",  # not a scratch root
        f"104 27 0:64 / /srv/f/scratch/rt-{dead}-x rw - tmpfs tmpfs rw",
    ]
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join(lines) + "\n")
    assert scratch.stale_mounts(str(mountinfo)) == [(Path(f"/srv/a b/scratch/rt-{dead}-1"), dead)]
