"""Bundles as adapters ship them: a deployed bundle directory packed again
(deterministic tar.gz), with its manifest rewritten for the far side."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import msgspec

from spanfaas.model import MANIFEST_NAME, FunctionSpec

__all__ = ["manifest_toml", "pack_dir"]

_SKIP_DIRS = {"__pycache__", ".git", ".venv", "node_modules"}


def pack_dir(root: str | Path, *, manifest: str | None = None) -> bytes:
    """A deterministic tar.gz of ``root``; ``manifest`` replaces its spanfaas.toml."""
    root = Path(root)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            files: list[tuple[str, Path]] = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
                for f in filenames:
                    full = Path(dirpath) / f
                    if full.is_file() and not f.endswith(".pyc"):
                        files.append((full.relative_to(root).as_posix(), full))
            if manifest is not None:
                files = [(rel, full) for rel, full in files if rel != MANIFEST_NAME]
                _add(tar, MANIFEST_NAME, manifest.encode(), 0o644)
            for rel, full in sorted(files):
                _add(tar, rel, full.read_bytes(), 0o755 if os.access(full, os.X_OK) else 0o644)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def manifest_toml(spec: FunctionSpec) -> str:
    """``spec`` as a ``spanfaas.toml`` (scalars, lists, string tables, sub-tables)."""
    data = msgspec.to_builtins(spec)
    top = [f"{k} = {_value(v)}" for k, v in data.items() if v is not None and (not isinstance(v, dict) or k == "env")]
    tables = [(k, v) for k, v in data.items() if isinstance(v, dict) and k != "env"]
    out = top
    for name, table in tables:
        out.append(f"\n[{name}]")
        out.extend(f"{k} = {_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(out) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
