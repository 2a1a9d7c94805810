"""Turn what the user points at (a function directory or one ``.py`` file) into a bundle.

A directory is packed as it is; its ``spanfaas.toml`` is validated here first
so a bad manifest fails before the upload.  A single file gets a generated
manifest: the name from the file's stem (``_`` → ``-``), the handler
``<stem>:handler``.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import tempfile
from pathlib import Path

from spanfaas.errors import InvalidManifest
from spanfaas.model import MANIFEST_NAME, FunctionSpec, load_manifest

__all__ = ["PackedFunction", "pack"]

_SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", ".mypy_cache", ".pytest_cache"})
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class PackedFunction:
    """A function ready to upload: its validated spec and its tar.gz bytes."""

    __slots__ = ("spec", "data")

    def __init__(self, spec: FunctionSpec, data: bytes) -> None:
        self.spec = spec
        self.data = data

    @property
    def name(self) -> str:
        return self.spec.name


def pack(path: str | Path) -> PackedFunction:
    """Validate and pack a function directory or a single ``.py`` file."""
    path = Path(path)
    if path.is_dir():
        return PackedFunction(load_manifest(path), _pack_dir(path))
    if path.is_file() and path.suffix == ".py":
        return _pack_file(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        return pack(path.parent)
    if not path.exists():
        raise InvalidManifest(f"{path} does not exist; pass a function directory or a .py file")
    raise InvalidManifest(f"{path} is neither a function directory nor a .py file")


def _pack_file(path: Path) -> PackedFunction:
    stem = path.stem
    name = stem.lower().replace("_", "-")
    if not _NAME_RE.match(name) or not stem.isidentifier():
        raise InvalidManifest(
            f"cannot make a function name from {path.name!r}: a name is lowercase letters, digits "
            "and '-', starting with a letter; rename the file or deploy a directory with a spanfaas.toml"
        )
    manifest = f'name = "{name}"\nhandler = "{stem}:handler"\n'
    with tempfile.TemporaryDirectory(prefix="spanfaas-pack-") as tmp:
        root = Path(tmp)
        (root / path.name).write_bytes(path.read_bytes())
        (root / MANIFEST_NAME).write_text(manifest)
        return PackedFunction(load_manifest(root), _pack_dir(root))


def _pack_dir(path: Path) -> bytes:
    try:
        from spanfaas.gateway.bundle import pack_function
    except ImportError:
        return _pack_dir_fallback(path)
    return pack_function(path)


def _pack_dir_fallback(root: Path) -> bytes:
    """A deterministic tar.gz: sorted entries, zeroed times and owners."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0) as gz, tarfile.open(
        fileobj=gz, mode="w", format=tarfile.PAX_FORMAT
    ) as tar:
        for file in sorted(_walk(root)):
            rel = file.relative_to(root).as_posix()
            data = file.read_bytes()
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o755 if file.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for entry in root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if entry.name not in _SKIP_DIRS:
                out.extend(_walk(entry))
        elif entry.is_file() and entry.suffix not in (".pyc", ".pyo"):
            out.append(entry)
    return out
