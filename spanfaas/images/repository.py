"""Images on disk: one directory per image, named by its id::

    <images>/<id>/site-packages/     the installed packages (first on sys.path)
    <images>/<id>/requirements.lock  what was installed
    <images>/<id>/image.json         the image's record: written last, so its
                                     presence means the image is whole

A build happens in a work directory, ``<images>/.tmp-<random>``, held by its
builder (``store/workdirs.py``), and is renamed into place only when complete,
so a failed or interrupted build leaves nothing at the image's path.  ``lock(id)`` takes a file lock: processes sharing the
directory build one image once (``.locks/<id>.lock``; the image's leases,
``leases.py``, are ``.locks/<id>.use``).  Everything is world-readable:
functions may run as another uid.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path

import msgspec

from spanfaas.store import workdirs
from spanfaas.store.images import ImageRecord

__all__ = ["Repository"]

_ID = re.compile(r"^[0-9a-f]{64}$")
MARKER = "image.json"
_decoder = msgspec.json.Decoder(ImageRecord)


class Repository:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()  # uv runs in a work directory and zygotes in '/': never relative
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / ".locks").mkdir(exist_ok=True)
        self.cache_dir = self.root / ".uv-cache"

    def path(self, id: str) -> Path:
        if not _ID.match(id):
            raise ValueError(f"{id!r} is not an image id (64 hex digits)")
        return self.root / id

    def site_packages(self, id: str) -> Path:
        return self.path(id) / "site-packages"

    def has(self, id: str) -> bool:
        """The image is whole on disk (its record was written last)."""
        return (self.path(id) / MARKER).is_file()

    def record(self, id: str) -> ImageRecord | None:
        try:
            return _decoder.decode((self.path(id) / MARKER).read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None

    def ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if _ID.match(p.name) and (p / MARKER).is_file())

    def workdir(self) -> workdirs.WorkDir:
        """A build directory, held until its ``close()`` (which removes what is left)."""
        return workdirs.make(self.root)

    def publish(self, work: Path, record: ImageRecord) -> bool:
        """Make ``work`` the image: write its record, open it to all, rename it into place.
        False when the image was there already (``work`` is then removed)."""
        _open_to_all(work)
        marker = work / MARKER
        marker.write_bytes(msgspec.json.encode(record))
        marker.chmod(0o644)
        final = self.path(record.id)
        try:
            work.rename(final)
        except OSError:
            if not self.has(record.id):
                raise
            shutil.rmtree(work, ignore_errors=True)
            return False
        _fsync_dir(self.root)
        return True

    def take_out(self, id: str) -> Path | None:
        """Take the image out of place at once (rename): the directory to delete, or
        None when it was not there.  Nothing can find the image after this."""
        trash = self.root / f"{workdirs.PREFIX}rm-{secrets.token_hex(6)}"  # unheld: any cleaner may finish it
        try:
            self.path(id).rename(trash)
        except FileNotFoundError:
            return None
        return trash

    def remove(self, id: str) -> bool:
        """Take the image out of place, then delete it, whoever uses it (the service's
        ``remove`` and ``gc`` hold its lease out first)."""
        trash = self.take_out(id)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return trash is not None

    def size(self, id_or_path: str | Path) -> int:
        root = id_or_path if isinstance(id_or_path, Path) else self.path(id_or_path)
        total = 0
        for dirpath, _, files in os.walk(root):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(dirpath, f)).st_size
        return total

    def clean_stale(self) -> int:
        """Remove the build directories no live builder holds (a crash's), in any
        pid namespace; a build in progress anywhere is left alone."""
        return workdirs.clean_stale(self.root)

    def lock(self, id: str) -> int:
        """Take the image's file lock (blocks; run it in a thread): one build of an
        image at a time, across processes.  Returns the fd to pass to ``unlock``."""
        fd = os.open(self.root / ".locks" / f"{self.path(id).name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        os.close(fd)  # closing the last descriptor releases the flock


def _open_to_all(root: Path) -> None:
    """Directories 0755, files a+r (x kept): functions may run as another uid."""
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            p = os.path.join(dirpath, f)
            with contextlib.suppress(OSError):
                mode = os.lstat(p).st_mode
                if mode & 0o444 != 0o444 and not os.path.islink(p):
                    os.chmod(p, mode | 0o444)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
