"""Make read-only trees reachable for a dedicated uid inside a mount namespace.

An interpreter installed under a private directory (pyenv under ``/root``,
mode 0700) cannot be read once a function drops to its own uid.  Inside the
function's private mount namespace we put a small tmpfs over the blocking
directory and bind the needed trees back into it, so the uid can reach the
interpreter and packages -- and nothing else that lived there (``/root``'s
other files disappear from the function's view).  The host's mounts are not
touched (mount propagation is private by then).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from spanfaas.model import Protection
from spanfaas.sandbox import _libc

MS_BIND = 0x1000
MS_REC = 0x4000
MS_MOVE = 0x2000
MS_NOSUID = 0x2
MS_NODEV = 0x4

MNT_DETACH = 2

__all__ = ["SHOWN", "blocking_ancestor", "expose_paths", "hide_other_mounts", "locate", "warm"]

# path -> (real path, its blocking ancestor): filled by ``warm`` in the zygote
# for the trees every function reads, inherited by the templates it forks.
_located: dict[str, tuple[str, str | None]] = {}


def blocking_ancestor(path: str) -> str | None:
    """The topmost directory on ``path`` that others cannot traverse, if any."""
    found = locate(path)
    return found[1] if found is not None else None


def locate(path: str) -> tuple[str, str | None] | None:
    """``path`` resolved, and its blocking ancestor; None if it does not exist."""
    found = _located.get(path)
    if found is not None:
        return found
    real = os.path.realpath(path)
    top = None
    at = "/"
    for part in real.split("/")[1:]:
        at = os.path.join(at, part)
        try:
            mode = os.stat(at).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            top = at
            break
    if top is not None and top != real:
        # The walk stopped at the blocking ancestor: the rest may not exist
        # (a bind of a missing tree would fail and turn the whole view off).
        try:
            os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            pass  # cannot tell (not root): keep it, as before
    return real, top


def warm(paths: Sequence[str]) -> None:
    """Resolve ``paths`` now, so that processes forked later find them done."""
    for path in paths:
        found = locate(path)
        if found is not None:
            _located[path] = found


STAGING = "/dev/shm"


def expose_paths(paths: Sequence[str], staging: str = STAGING) -> Protection:
    """Bind ``paths`` back under a tmpfs laid over each blocking ancestor.

    Call as root in a private mount namespace, before dropping privileges.
    A fresh tmpfs is mounted on ``staging`` (``/dev/shm``: the function gets
    a private, empty one as a bonus) to park the trees while their parent is
    covered; it is left empty.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        found = locate(path)
        if found is None:
            continue
        real, top = found
        if top is not None and real != top:
            groups.setdefault(top, []).append(real)
    if not groups:
        return Protection("fs-view", True, "every needed tree is readable by the function's uid")
    done: list[str] = []
    try:
        _libc.mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        for top, members in groups.items():
            # Keep only outermost members (a member inside another comes along).
            members = sorted(set(members))
            outer = [m for m in members if not any(m != o and m.startswith(o + "/") for o in members)]
            stages = []
            for i, member in enumerate(outer):
                stage = os.path.join(staging, f".expose-{len(done)}-{i}")
                os.makedirs(stage, exist_ok=True)
                _libc.mount(member, stage, None, MS_BIND | MS_REC)
                stages.append((stage, member))
            _libc.mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for stage, member in stages:
                target = member
                os.makedirs(target, mode=0o755, exist_ok=True)
                _libc.mount(stage, target, None, MS_MOVE)
                os.rmdir(stage)
            done.append(f"{top} -> {', '.join(outer)}")
    except OSError as exc:
        return Protection("fs-view", False, f"could not expose {', '.join(groups)}: {exc}")
    return Protection("fs-view", True, "; ".join(done))


SHOWN = ("/proc", "/sys", "/dev", "/etc")
"""Trees whose mounts every function keeps: procfs, sysfs (read-only), devices, and
the host's ``/etc`` files (a container's bind-mounted ``hosts``, ``resolv.conf``)."""


def _within(path: str, tree: str) -> bool:
    return tree == "/" or path == tree or path.startswith(tree + "/")


def hide_other_mounts(needed: Sequence[str], mountinfo: int) -> Protection:
    """Detach, from this mount namespace, every mount off the trees in ``needed``
    and ``SHOWN``: the function no longer sees (in ``/proc/self/mountinfo``) nor
    reaches the host's other volumes and mounts, and where they live.

    ``mountinfo``: an open ``/proc/PID/mountinfo`` of the template (-1: none),
    read from its start.  A mount is kept
    when it is ``/``, on one of those trees or an ancestor of one.  Call as root
    in the function's private mount namespace, once its own mounts are made;
    the host's mounts are not touched (propagation is private by then).
    """
    trees = list(SHOWN)
    for path in needed:
        found = locate(path)
        if found is not None:
            trees.append(found[0].rstrip("/") or "/")
    try:
        if mountinfo < 0:
            raise OSError(errno.EBADF, "the template's mountinfo could not be opened")
        os.lseek(mountinfo, 0, os.SEEK_SET)
        with open(mountinfo, closefd=False) as f:
            points = [_libc.unescape_mount_field(line.split()[4]) for line in f]
    except OSError as exc:
        return Protection("mount-view", False, f"the host's mounts stay visible: cannot read its mountinfo: {exc.strerror}")
    detached = 0
    for point in points:
        if point == "/" or any(_within(point, t) or _within(t, point) for t in trees):
            continue
        try:
            _libc.umount2(point, MNT_DETACH)
            detached += 1
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                continue  # gone with a mount above it
            return Protection("mount-view", False, f"the host's mounts stay visible: detaching {point}: {exc.strerror}")
    return Protection("mount-view", True, f"only the mounts on the paths it needs ({detached} of the host's detached)")
