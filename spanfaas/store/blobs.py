"""Content-addressed blobs on disk: ``<dir>/sha256/<ab>/<digest>``.

Writes are atomic (a temporary file in the same directory, fsync, rename),
so a reader sees a whole blob or none, and a crash leaves no half blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from spanfaas.errors import InvalidRequest

__all__ = ["BlobStore", "sha256"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, dir: str | Path) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        if not _DIGEST.match(digest):
            raise InvalidRequest(f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")
        return self.dir / "sha256" / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes, *, digest: str | None = None) -> str:
        """Store ``data``; return its sha256 (``digest``: computed already by the caller).
        Storing the same bytes twice is a no-op."""
        digest = digest or sha256(data)
        target = self.path(digest)
        if target.is_file():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return digest

    def get(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise KeyError(digest) from None

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> list[str]:
        root = self.dir / "sha256"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.glob("*/*") if _DIGEST.match(p.name))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
