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
