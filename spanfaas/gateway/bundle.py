"""Function bundles: pack a directory, and unpack an upload safely.

``pack_function(path)`` makes a deterministic tar.gz of a function directory
(the same bytes for the same files, so the same digest).  ``unpack`` checks
every member before it writes anything: no absolute paths, no ``..``, no link
that leads outside the bundle, no device files, a cap on the unpacked size, on
the members' count and paths, and on a tar's headers (a tar.gz's and a plain
tar's alike, each member as tarfile reads it); then finds the manifest at the
root or in the one top-level directory.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from spanfaas.errors import InvalidBundle, InvalidManifest, PayloadTooLarge, format_size, format_sizes
from spanfaas.model import MANIFEST_NAME, FunctionSpec, manifest_text, missing_manifest, parse_manifest, single_file_manifest

__all__ = ["DISK_FAULTS", "UNPACK_FACTOR", "find_root", "handler_path", "largest_files", "load_bundle_spec", "pack_function", "unpack"]

SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache"})
SKIP_SUFFIXES = (".pyc", ".pyo")
UNPACK_FACTOR = 8
"""An archive may unpack to at most this many times the bundle limit."""
MAX_MEMBERS = 20_000
MAX_DEPTH = 128
"""Directories a member's path may go down: deeper, unpacking it recursed past Python's limit."""
MAX_PART = 255
"""Bytes of one part of a member's path (a file system's NAME_MAX)."""
MAX_PATH = 1024
"""Bytes of a member's path: with the data dir's path before it, within a file system's PATH_MAX."""
MAX_HEADER = 1 << 20
"""Bytes of one extended tar header (a pax header, a GNU long name), which tarfile reads whole."""
HEADER_ROOM = MAX_MEMBERS * 4096
"""What a tar stream may hold besides its files' bytes: each member's headers and padding."""
DISK_FAULTS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE, errno.ENFILE})
"""What writing an unpack may meet that is the gateway's disk failing, not the bundle."""


# -- packing -------------------------------------------------------------------------


def pack_function(path: str | Path) -> bytes:
    """A deterministic tar.gz of a function directory (or of one ``.py`` file
    with a manifest beside it or none: then ``name`` is the file's stem)."""
    path = Path(path)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if path.is_file():
                _add_bytes(tar, path.name, path.read_bytes(), executable=False)
                manifest = path.with_name(MANIFEST_NAME)
                if manifest.is_file():
                    _add_bytes(tar, MANIFEST_NAME, manifest.read_bytes(), executable=False)
                else:
                    _add_bytes(tar, MANIFEST_NAME, single_file_manifest(path.stem).encode(), executable=False)
            elif path.is_dir():
                if not (path / MANIFEST_NAME).is_file():
                    raise missing_manifest(path)
                for rel, full in _walk(path):
                    if full.is_dir():
                        info = tarfile.TarInfo(rel)
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        _normalize(info)
                        tar.addfile(info)
                    else:
                        _add_bytes(tar, rel, full.read_bytes(), executable=os.access(full, os.X_OK))
            else:
                raise InvalidBundle(f"{path} is neither a function directory nor a .py file")
    return buf.getvalue()


def largest_files(path: str | Path, n: int = 3) -> list[tuple[str, int]]:
    """The ``n`` largest files ``pack_function(path)`` puts in its bundle, with their sizes,
    largest first: what to look at when the bundle is over ``max_bundle``."""
    path = Path(path)
    if path.is_file():
        return [(path.name, path.stat().st_size)]
    sizes = [(rel, full.stat().st_size) for rel, full in _walk(path) if not full.is_dir()]
    return sorted(sizes, key=lambda item: (-item[1], item[0]))[:n]


def _walk(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not os.path.islink(os.path.join(dirpath, d)))
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        for d in dirnames:
            out.append((d if rel_dir == "." else f"{rel_dir}/{d}", base / d))
        for f in sorted(filenames):
            full = base / f
            if f.endswith(SKIP_SUFFIXES) or not full.is_file():
                continue  # sockets, broken links
            out.append((f if rel_dir == "." else f"{rel_dir}/{f}", full))
    out.sort(key=lambda item: item[0])
    return out


def _normalize(info: tarfile.TarInfo) -> None:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, *, executable: bool) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o755 if executable else 0o644
    _normalize(info)
    tar.addfile(info, io.BytesIO(data))


# -- unpacking -------------------------------------------------------------------------


def detect_format(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    head = data[:8].hex(" ") or "nothing"
    raise InvalidBundle(
        f"the bundle is not a tar.gz, tar or zip archive (it starts with {head}); "
        "send the function directory packed as tar.gz, as `spanfaas deploy PATH` does"
    )


def unpack(data: bytes, dest: Path, *, max_size: int) -> None:
    """Check every member, then extract the archive into ``dest``."""
    fmt = detect_format(data)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "zip":
            _unpack_zip(data, dest, max_size)
        else:
            _unpack_tar(data, dest, max_size)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, OSError, ValueError) as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_FAULTS:
            raise  # the disk, not the bundle (the archive is read from memory): the caller says so
        raise InvalidBundle(f"the {fmt} bundle is damaged: {exc}") from None


def _check_name(name: str) -> str:
    if "\x00" in name:
        raise InvalidBundle(f"bundle member {name!r} has a NUL byte in its name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
        raise InvalidBundle(f"bundle member '{name}' has an absolute path; members must be relative to the bundle root")
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../") or "/../" in f"/{name.replace(chr(92), '/')}/":
        raise InvalidBundle(f"bundle member '{name}' leads outside the bundle ('..'); repack without it")
    parts = norm.split("/")
    if len(parts) > MAX_DEPTH:
        raise InvalidBundle(f"bundle member '{_shown(name)}' is {len(parts)} parts deep; at most {MAX_DEPTH} are allowed")
    longest = max(len(part.encode(errors="surrogateescape")) for part in parts)
    if longest > MAX_PART:
        raise InvalidBundle(
            f"bundle member '{_shown(name)}' has a part of {longest} bytes; at most {MAX_PART} are allowed "
            "(the longest name a file system takes)"
        )
    if (size := len(norm.encode(errors="surrogateescape"))) > MAX_PATH:
        raise InvalidBundle(f"bundle member '{_shown(name)}' is {size:,} bytes long; at most {MAX_PATH:,} are allowed")
    return norm


def _shown(name: str) -> str:
    """A member's name as a message shows it: a long one by its ends."""
    return name if len(name) <= 120 else f"{name[:40]}…{name[-60:]}"


class _Capped(io.RawIOBase):
    """A bundle's tar stream, for tarfile: read (a tar.gz's inflated) as tarfile reads it, never
    past what the bundle may unpack to (with its headers), and never in one read of more than
    ``MAX_HEADER``.  tarfile reads an extended header (a pax header, a GNU long name) whole,
    in one read of the size its header gives, then parses it: unbounded, 64 KiB of gzip made
    64 MiB of the gateway's memory, and a plain tar of 60 MiB (within the default max_bundle)
    377 MB; and headers alone (directories, links) did not count towards the cap."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self._raw = raw
        self._limit = limit

    @classmethod
    def of(cls, data: bytes, limit: int) -> _Capped:
        """The tar stream of a tar.gz, inflated as it is read, or of a plain tar."""
        if data[:2] == b"\x1f\x8b":
            return cls(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), limit)
        return cls(io.BytesIO(data), limit)  # (shares data's bytes: no copy)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1 - self._raw.tell()
        elif size > MAX_HEADER:
            have, allowed = format_sizes(size, MAX_HEADER)
            raise InvalidBundle(f"the bundle has a tar header of {have}; at most {allowed} is allowed (repack it with tar or `spanfaas deploy`)")
        out = self._raw.read(max(min(size, self._limit + 1 - self._raw.tell()), 0))
        self._check()
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._raw.tell() + offset if whence == io.SEEK_CUR else -1
        if target < 0:
            raise io.UnsupportedOperation("only seeks from the start or the current position")
        self._raw.seek(min(target, self._limit + 1))
        self._check()
        return self._raw.tell()

    def finish(self) -> None:
        """Read the stream to its end: gzip checks its length and CRC there (a bundle cut short,
        or changed, is damaged), and what follows the tar's end counts towards the cap."""
        while self._raw.read(1 << 20):
            self._check()

    def _check(self) -> None:
        if self._raw.tell() > self._limit:
            raise _too_large(self._limit - HEADER_ROOM)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _too_large(max_size: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the bundle unpacks to more than {format_size(max_size)} ({UNPACK_FACTOR} × max_bundle); "
        "make it smaller or raise SPANFAAS_MAX_BUNDLE"
    )


def _unpack_tar(data: bytes, dest: Path, max_size: int) -> None:
    """Each member is checked as tarfile reads it (its count, name, kind, links and the size so
    far), so a hostile stream is refused at the member that breaks a rule, not once all of it
    was read; then the whole is extracted."""
    stream = _Capped.of(data, max_size + HEADER_ROOM)
    with stream, tarfile.open(fileobj=stream, mode="r:") as tar:
        members = []
        total = 0
        while (m := tar.next()) is not None:  # one by one: each checked as it comes
            members.append(m)
            if len(members) > MAX_MEMBERS:
                raise InvalidBundle(f"the bundle has more than {MAX_MEMBERS} members; at most {MAX_MEMBERS} are allowed")
            _check_member(m)
            total += max(m.size, 0)
            if total > max_size:
                raise _too_large(max_size)
        stream.finish()
        tar.extractall(dest, members=members, filter="data")


def _check_member(m: tarfile.TarInfo) -> None:
    norm = _check_name(m.name)
    if m.isdev() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        raise InvalidBundle(f"bundle member '{m.name}' is a device, fifo or special file; only files, directories and links are allowed")
    if m.issym() or m.islnk():
        target = m.linkname
        if m.issym() and not target.startswith("/"):
            target = posixpath.join(posixpath.dirname(norm), target)
        resolved = posixpath.normpath(target)
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise InvalidBundle(f"bundle member '{m.name}' links to '{m.linkname}', outside the bundle")


def _unpack_zip(data: bytes, dest: Path, max_size: int) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise InvalidBundle(f"the bundle has {len(infos)} members; at most {MAX_MEMBERS} are allowed")
        total = 0
        for info in infos:
            _check_name(info.filename)
            ftype = stat.S_IFMT(info.external_attr >> 16)
            if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
                raise InvalidBundle(f"bundle member '{info.filename}' is a link or special file; zip bundles may hold only files and directories")
            total += info.file_size
            if total > max_size:
                raise PayloadTooLarge(
                    f"the bundle unpacks to more than {format_size(max_size)} ({UNPACK_FACTOR} × max_bundle); "
                    "make it smaller or raise SPANFAAS_MAX_BUNDLE"
                )
        root = dest.resolve()
        for info in infos:
            target = (root / _check_name(info.filename)).resolve()
            if root != target and root not in target.parents:
                raise InvalidBundle(f"bundle member '{info.filename}' leads outside the bundle")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            if (info.external_attr >> 16) & 0o111:
                target.chmod(0o755)


def find_root(dest: Path) -> Path:
    """The directory holding the manifest: the bundle root or its one top-level directory."""
    if (dest / MANIFEST_NAME).is_file():
        return dest
    entries = [p for p in dest.iterdir() if p.name not in ("__MACOSX",)]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).is_file():
        return entries[0]
    raise InvalidManifest(
        f"no {MANIFEST_NAME} at the bundle root or in its single top-level directory; "
        f"files: {_listing(dest)}"
    )


def handler_path(root: Path, module: str) -> Path | None:
    parts = module.split(".")
    for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def load_bundle_spec(root: Path, name: str) -> FunctionSpec:
    """Parse the manifest and check it against the URL's name and the files."""
    spec = parse_manifest(manifest_text((root / MANIFEST_NAME).read_bytes()), source=MANIFEST_NAME)
    if spec.name != name:
        raise InvalidManifest(
            f"{MANIFEST_NAME} names the function '{spec.name}' but it is deployed as '{name}'; "
            "make the manifest's name match the URL",
            key="name",
        )
    if handler_path(root, spec.module) is None:
        raise InvalidBundle(f"handler module '{spec.module}' not found in bundle; files: {_listing(root)}")
    return spec


def _listing(root: Path, limit: int = 20) -> str:
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    if not names:
        return "(none)"
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more

