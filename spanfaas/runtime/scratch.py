"""The runtime's scratch root: the directory under which each function's and
each instance's scratch dir is made (``<data dir>/scratch/rt-<pid>-<n>``).

With the sandbox, each template mounts a private tmpfs over its function's
scratch dir (``fitter``).  Without it, a fresh dir per strict call on the data
dir's file system costs an inode allocation each: on an ext4 without a
journal, a scan past every inode deleted in the last minute (~180 µs a call
under load, ~15% of the template's CPU).  Where it may mount (root), the
runtime puts its scratch root on a tmpfs of its own, capped at
``runtime.scratch_size`` MiB: a function that fills it gets ENOSPC, the host's
memory does not fill.  Elsewhere the scratch root stays on disk.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from spanfaas.sandbox import _libc

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 2


def make_root(root: Path, *, tmpfs_bytes: int | None) -> bool:
    """Make the scratch root (mode 0711); ``tmpfs_bytes``: mount a tmpfs of that
    size on it.  True when it is on a tmpfs."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    if tmpfs_bytes is None:
        return False
    try:
        _libc.mount("tmpfs", str(root), "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0711,size={tmpfs_bytes}")
    except OSError:
        return False  # (not root, or no mounts allowed here: on disk)
    return True


def remove_root(root: Path) -> None:
    """Unmount (if mounted) and remove a scratch root and what it holds."""
    try:
        _libc.umount2(str(root), MNT_DETACH)
    except OSError:
        pass  # EINVAL: not a mount point (on disk); ENOENT: gone
    shutil.rmtree(root, ignore_errors=True)


def remove_stale(parent: Path) -> None:
    """Scratch roots of runtimes that died (``rt-<pid>-<n>`` with no such pid)."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        parts = entry.name.split("-")
        if len(parts) == 3 and parts[0] == "rt" and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            remove_root(entry)
