"""A gateway's own copies of function bundles, fetched from the store when missing.

The store keeps the bundle of every stored version (``Store.put_function(…,
bundle=)``).  Each gateway caches what it runs in its data dir: the archive in
``blobs/`` (content-addressed) and the unpacked tree in ``bundles/<digest>``,
which the infrastructure runs.  A bundle missing here is taken from the local
archive, or else fetched from the store, checked against its digest, kept and
unpacked: gateways sharing a store need not share a data dir.

An unpacked bundle in use is *held*: a shared ``flock`` on its directory, taken
for each version deployed from it (``bundle``) and let go once that version
stopped here (``release``, ``release_all``).  ``discard`` deletes only what it
can lock exclusively, so it never deletes a bundle another version of this
gateway, or another gateway sharing the data dir, still runs or drains.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from spanfaas.errors import InfraUnavailable
from spanfaas.model import Bundle
from spanfaas.store import BlobStore, Store, sha256, workdirs
from spanfaas.gateway import bundle as bundles

__all__ = ["BundleCache"]

Check = Callable[[Path], object]
"""Called on a fresh unpack before it is published (a deploy checks its manifest)."""


class _Hold:
    """A shared lock on one unpacked bundle, and who here uses it (name -> count)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users: Counter[str] = Counter()


class BundleCache:
    def __init__(self, data: Path, store: Store, *, max_bundle: int) -> None:
        self.store = store
        self.blobs = BlobStore(data / "blobs")
        self.dir = data / "bundles"
        self.max_unpacked = max_bundle * bundles.UNPACK_FACTOR
        self._holds: dict[str, _Hold] = {}
        self._lock = threading.Lock()  # methods run on worker threads

    def clean(self) -> None:
        """Unpacks a crash interrupted (only ever in a work directory); another
        gateway's unpack in progress is left alone."""
        workdirs.clean_stale(self.dir)

    # -- using -------------------------------------------------------------------------

    def bundle(self, digest: str, user: str) -> Bundle:
        """The unpacked bundle, held for ``user`` until ``release``; unpacked from the
        archive here, or from the store's copy, if needed."""
        return self._held(digest, user, lambda: self._archive(digest))

    def add(self, data: bytes, user: str, check: Check) -> Bundle:
        """A bundle uploaded here, unpacked (``check``-ed first when new) and kept, held
        for ``user``.  Nothing reaches the store here."""
        digest = sha256(data)
        bundle = self._held(digest, user, lambda: data, check)
        try:
            with _writing(self.blobs.dir):
                self.blobs.put(data, digest=digest)
        except BaseException:
            self.release(digest, user)
            raise
        return bundle

    def _held(self, digest: str, user: str, fetch: Callable[[], bytes], check: Check | None = None) -> Bundle:
        final = self.dir / digest
        with self._lock:
            hold = self._holds.get(digest)
            if hold is not None:  # this gateway holds it: it is there
                hold.users[user] += 1
                return Bundle(digest=digest, path=str(bundles.find_root(final)))
        data: bytes | None = None
        while (fd := _share(final)) is None:
            if data is None:
                data = fetch()
            with _writing(self.dir), workdirs.make(self.dir) as work:  # held: another gateway's start leaves it be
                bundles.unpack(data, work.path, max_size=self.max_unpacked)
                if check is not None:
                    check(bundles.find_root(work.path))
                _publish(work.path, final)
            # and hold it: a discard may have taken it in between (then unpack again)
        with self._lock:
            hold = self._holds.get(digest)
            if hold is None:
                hold = self._holds[digest] = _Hold(fd)
            else:
                os.close(fd)  # held meanwhile by another thread here
            hold.users[user] += 1
        try:
            return Bundle(digest=digest, path=str(bundles.find_root(final)))
        except BaseException:
            self.release(digest, user)
            raise

    def _archive(self, digest: str) -> bytes:
        """The bundle's archive: from the data dir, or else fetched from the store,
        checked and kept in the data dir."""
        try:
            return self.blobs.get(digest)
        except KeyError:
            pass
        data = self.store.get_blob(digest)
        if data is None:
            raise InfraUnavailable(
                f"the bundle {digest[:12]}… is neither in the store nor in {self.blobs.dir}; deploy the function again"
            )
        got = sha256(data)
        if got != digest:
            raise InfraUnavailable(
                f"the bundle {digest[:12]}… in the store does not match its digest (it has {got[:12]}…); "
                "deploy the function again"
            )
        with _writing(self.blobs.dir):
            self.blobs.put(data, digest=digest)
        return data

    # -- letting go ----------------------------------------------------------------------

    def release(self, digest: str, user: str) -> bool:
        """One use by ``user`` ended; True when nothing here holds the bundle any more."""
        with self._lock:
            hold = self._holds.get(digest)
            if hold is None:
                return True
            hold.users[user] -= 1
            if hold.users[user] <= 0:
                del hold.users[user]
            if hold.users:
                return False
            del self._holds[digest]
        os.close(hold.fd)
        return True

    def release_all(self, user: str) -> set[str]:
        """Every use by ``user`` ended (its function stopped here); the digests nothing
        here holds any more."""
        with self._lock:
            digests = [d for d, hold in self._holds.items() if user in hold.users]
        freed = set()
        for digest in digests:
            with self._lock:
                hold = self._holds.get(digest)
                if hold is None:
                    continue
                hold.users.pop(user, None)
                if hold.users:
                    continue
                del self._holds[digest]
            os.close(hold.fd)
            freed.add(digest)
        return freed

    def discard(self, digests: Iterable[str]) -> set[str]:
        """Delete the copies of ``digests`` here that nobody runs (the caller knows no
        stored version refers to them); return those deleted."""
        deleted = set()
        for digest in digests:
            with self._lock:
                if digest in self._holds:
                    continue  # a version here runs it
            if self._remove_unpacked(self.dir / digest):
                self.blobs.delete(digest)
                deleted.add(digest)
        return deleted

    def _remove_unpacked(self, final: Path) -> bool:
        """False when someone holds it."""
        try:
            fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another gateway sharing the data dir runs it
            if not _same(final, fd):
                return False  # unpacked again meanwhile: about to be used
            # Moved aside in one step (a holder checks the path once it has its lock), then
            # deleted as a work directory: one a crash left half deleted is cleaned at start.
            with workdirs.make(self.dir, tag="gone-") as trash:
                os.rename(final, trash.path / final.name)
                os.close(fd)  # before the deletion: a holder waiting on it goes on (and unpacks again)
                fd = -1
            return True
        finally:
            if fd >= 0:
                os.close(fd)


@contextlib.contextmanager
def _writing(where: Path) -> Iterator[None]:
    """A write into the data dir that its disk refused (full, read-only, failing) as the
    platform's failure, which names it; not a damaged bundle, not a 500."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in bundles.DISK_FAULTS:
            raise
        raise InfraUnavailable(
            f"the gateway could not write the bundle into its data dir ({where}): {exc.strerror} "
            f"[errno {exc.errno}]; free space on that disk, or make it writable, then try again"
        ) from exc


def _share(final: Path) -> int | None:
    """A shared lock on the unpacked bundle, or None when it is not there."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # a discard holds it only while it moves it aside
        if _same(final, fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _same(path: Path, fd: int) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    return False


def _publish(tmp: Path, final: Path) -> None:
    try:
        tmp.rename(final)
    except OSError:
        if not final.is_dir():
            raise  # not a concurrent unpack of the same digest
