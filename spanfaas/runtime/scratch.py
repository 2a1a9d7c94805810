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

The runtime unmounts its tmpfs at every close (and when its start fails).  A
runtime killed (SIGKILL, the OOM killer, a second Ctrl-C while ``spanfaas up``
starts) runs nothing more: its tmpfs stays in the host's mount table, holding
what its functions wrote, until a runtime starts on the same data dir
(``remove_stale``) or ``spanfaas doctor`` sweeps it (``stale_mounts``, any data dir).
"""

from __future__ import annotations

import errno
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


def remove_root(root: Path) -> bool:
    """Unmount (if mounted) and remove a scratch root and what it holds; True when it was mounted."""
    try:
        _libc.umount2(str(root), MNT_DETACH)
        mounted = True
    except OSError:
        mounted = False  # EINVAL: not a mount point (on disk); ENOENT: gone
    shutil.rmtree(root, ignore_errors=True)
    return mounted


def remove_stale(parent: Path) -> list[tuple[Path, bool]]:
    """Remove the scratch roots of runtimes that died (``rt-<pid>-<n>`` with no such pid)
    under ``parent``: each one removed, and whether it was a mounted tmpfs."""
    if not parent.is_dir():
        return []
    return [(entry, remove_root(entry)) for entry in sorted(parent.iterdir()) if _dead_runtime(entry.name)]


def _dead_runtime(name: str) -> bool:
    """``rt-<pid>-<n>`` of a pid that is not running."""
    parts = name.split("-")
    return len(parts) == 3 and parts[0] == "rt" and parts[1].isdigit() and parts[2].isdigit() and not os.path.exists(f"/proc/{parts[1]}")


def stale_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[Path, int]]:
    """The scratch tmpfs mounts of runtimes that died, wherever their data dir is (a
    ``scratch/rt-<pid>-<n>`` tmpfs in this mount namespace whose pid is not running),
    each with that pid."""
    out = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            point = Path(_libc.unescape_mount_field(fields[4]))
            fstype = fields[fields.index("-") + 1]
            if fstype == "tmpfs" and point.parent.name == "scratch" and _dead_runtime(point.name):
                out.append((point, int(point.name.split("-")[1])))
    return out


def sweep(root: Path) -> None:
    """Unmount a dead runtime's scratch tmpfs and remove its dir; OSError when it cannot
    be unmounted (not root: EPERM)."""
    try:
        _libc.umount2(str(root), MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # (not mounted any more: someone swept it)
            raise
    shutil.rmtree(root, ignore_errors=True)
