"""A function's code and scratch at fixed paths in its mount namespace: ``/var/task``, ``/var/tmp``.

The runtime keeps a function's bundle and scratch dir under its data dir; a
function that saw them there (``__file__``, its working directory, ``TMPDIR``,
``/proc/self/mountinfo``) learnt where the data dir lives and how the host lays
it out.  In the function's private mount namespace, as root and before the
template locks itself down, the fitter puts

* a read-only **copy** of the bundle at ``CODE`` (``/var/task``; ``place_code``),
  on a small tmpfs laid over ``/var``: a bind mount would do without the copy, but
  ``/proc/self/mountinfo`` names a bind mount's source directory (its *root*
  field: the path within its file system), and so the host path again.  The
  copy is made once per template, by the fitter, from a descriptor of the
  bundle opened before ``/var`` is covered (the bundle may live there, as
  ``/var/lib/...``), with modes, owners and modification times kept (so the
  bundle's ``__pycache__`` stays valid).  The fitter is in the function's
  memory cgroup by then (``fitter.join_memory_cgroup``): the copy's pages
  count against the function's memory limit (the tmpfs is capped at half of
  it), not the runtime's;
* the scratch tmpfs at ``SCRATCH`` (``/var/tmp``, in that tmpfs;
  ``place_scratch``), where the template makes and removes each instance's
  dir (``/var/tmp/i<n>``).

The tmpfs covers the host's ``/var``, in this namespace only (propagation is
private by then).  So nothing else the function needs may live below it (an
interpreter or packages there): ``clash`` says so, and the caller then keeps
the host paths, as without this module.  ``/tmp`` is left as it is, not made
the scratch: a function with ``network = "host"`` reaches the host's unix
sockets there (PostgreSQL's, X11's), and a data dir (with an image's packages)
may live there.  (Landlock already kept a function from writing anywhere in it
but its instance's dir: an instance never had ``/tmp`` itself to write in.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections.abc import Sequence
from typing import Final

from spanfaas.sandbox import _libc

__all__ = ["CODE", "SCRATCH", "clash", "place_code", "place_scratch"]

CODE: Final = "/var/task"
"""Where a sandboxed function finds its code (``__file__``, ``sys.path[0]``)."""
SCRATCH: Final = "/var/tmp"
"""Its scratch tmpfs: an instance's working dir, ``TMPDIR`` and ``HOME`` are ``/var/tmp/i<n>``."""
CODE_BYTES: Final = 256 * 1024 * 1024
"""The code tmpfs's cap: a bundle larger than this keeps its host path (ENOSPC while copying)."""

_COVERED: Final = "/var"

MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_REMOUNT: Final = 0x20
MS_BIND: Final = 0x1000
MNT_DETACH: Final = 2
AT_FDCWD: Final = -100
AT_RECURSIVE: Final = 0x8000
OPEN_TREE_CLONE: Final = 1
OPEN_TREE_CLOEXEC: Final = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH: Final = 0x4


def _under(path: str, tree: str) -> bool:
    return tree == "/" or path == tree or path.startswith(tree + "/")


def clash(needed: Sequence[str]) -> str:
    """Why the fixed paths cannot be used ("" if they can): a tree the function
    needs (other than its bundle and scratch dir) lies below ``/var`` and would
    be covered."""
    for path in needed:
        real = os.path.realpath(path)
        if _under(real, _COVERED):
            return f"{path} lies under {_COVERED}, which the fixed paths cover"
        if _under(_COVERED, real.rstrip("/") or "/"):
            return f"{path} holds {_COVERED}, which the fixed paths cover"
    return ""


def place_code(bundle: str, trees: Sequence[tuple[str, str]] = (), size: int = CODE_BYTES) -> str:
    """Cover ``/var`` with a tmpfs holding a read-only copy of ``bundle`` at
    ``CODE`` (and an empty ``SCRATCH`` to mount on), and each (host dir, fixed
    dir) of ``trees`` bound read-only at its fixed dir below ``/var``
    (``runtimepaths.py``: the function's Python); the tmpfs holds at most
    ``size`` bytes.  Call as root in the function's private mount namespace,
    in the function's memory cgroup (the copy's pages are charged to the
    cgroup of the process that writes them).  "" when done; else why not,
    and nothing stays mounted."""
    try:
        src = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open the bundle: {exc.strerror}"
    clones: list[tuple[int, str]] = []
    why_not = ""
    for host, fixed in trees:  # cloned before /var is covered
        try:
            flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
            clones.append((_libc.syscall("open_tree", AT_FDCWD, ctypes.c_char_p(host.encode()), flags), fixed))
        except OSError as exc:
            why_not = f"cannot bind {host} at {fixed}: {exc.strerror or exc}"
            break
    if not why_not:
        try:
            links = _symlinks("/var")
            _libc.mount("tmpfs", "/var", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0755,size={size}")
        except OSError as exc:
            why_not = f"cannot cover /var: {exc.strerror or exc}"
    if why_not:
        for fd, _ in clones:
            os.close(fd)
        os.close(src)
        return why_not
    try:
        try:
            for name, target in links:  # /var/run -> /run and the like, as on the host
                if not _under(f"/var/{name}", CODE) and not _under(f"/var/{name}", SCRATCH):
                    os.symlink(target, f"/var/{name}")
            st = os.fstat(src)
            os.mkdir(SCRATCH, 0o755)
            os.mkdir(CODE, 0o755)
            _copy_tree(src, CODE)
            os.chmod(CODE, stat.S_IMODE(st.st_mode))
            os.chown(CODE, st.st_uid, st.st_gid)
            for fd, fixed in clones:
                os.makedirs(fixed, 0o755)
                _libc.syscall("move_mount", fd, ctypes.c_char_p(b""), AT_FDCWD, ctypes.c_char_p(fixed.encode()), MOVE_MOUNT_F_EMPTY_PATH)
                _libc.mount(None, fixed, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            os.close(src)
            for fd, _ in clones:
                os.close(fd)
        _libc.mount(None, "/var", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except OSError as exc:
        _libc.umount2("/var", MNT_DETACH)  # (with the trees moved below it)
        if exc.errno == errno.ENOSPC:
            return f"the bundle is larger than the code tmpfs ({size >> 20} MiB: at most {CODE_BYTES >> 20}, and half the function's memory limit)"
        return f"copying the bundle: {exc.strerror or exc}"
    return ""


def place_scratch(uid: int | None, scratch_bytes: int) -> str:
    """Mount the scratch tmpfs (``scratch_bytes``, owned by ``uid``, mode 0300: the template
    makes and removes its instances' dirs there, and no instance may list or watch it) on
    ``SCRATCH``, once ``place_code`` made it.  "" when done; else why not."""
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    try:
        _libc.mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0300,size={scratch_bytes}{owner}")
    except OSError as exc:
        return f"cannot mount the scratch tmpfs at {SCRATCH}: {exc.strerror or exc}"
    return ""


def _symlinks(directory: str) -> list[tuple[str, str]]:
    """The symbolic links directly in ``directory``: (name, target)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return [(e.name, os.readlink(e.path)) for e in entries if e.is_symlink()]


def _copy_tree(src: int, dst: str) -> None:
    """Copy the tree open as ``src`` into the existing dir ``dst``: regular files,
    dirs and symbolic links (others skipped), with mode, owner and mtime."""
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.name, dir_fd=src), target)
            os.lchown(target, st.st_uid, st.st_gid)
            continue
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
            try:
                os.mkdir(target, 0o700)
                _copy_tree(sub, target)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            _copy_file(src, entry.name, target)
        else:
            continue
        os.chown(target, st.st_uid, st.st_gid)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_file(src_dir: int, name: str, target: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            while size > 0:
                sent = os.sendfile(out, fd, None, size)
                if sent == 0:
                    break
                size -= sent
        finally:
            os.close(out)
    finally:
        os.close(fd)
