"""Wheels for tests and benchmarks, written directly (no build backend, no index).

    make_wheel(wheelhouse, "tinycalc", "1.2", code="def add(a, b):\\n    return a + b\\n",
               requires=["tinyhelper>=1"])

A wheel is a zip with the package's files, ``METADATA``, ``WHEEL`` and a
``RECORD`` of sha256 digests; that is all uv needs to resolve and install it.
The bytes are deterministic (fixed timestamps), so the same call gives the
same wheel and the same hash.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["find_wheel", "make_wheel"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_wheel(
    wheelhouse: str | Path,
    name: str,
    version: str,
    *,
    code: str | None = None,
    requires: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<name>-<version>-py3-none-any.whl`` into ``wheelhouse``: a package
    ``name`` (its ``__init__.py`` is ``code``, by default one that knows its version)."""
    wheelhouse = Path(wheelhouse)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    entries: dict[str, str] = dict(files or {f"{module}/__init__.py": code if code is not None else f"__version__ = {version!r}\n"})
    entries[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    entries[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: spanfaas-testing\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    path = wheelhouse / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for arcname, text in entries.items():
            data = text.encode()
            z.writestr(zipfile.ZipInfo(arcname, _EPOCH), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        z.writestr(zipfile.ZipInfo(f"{dist}/RECORD", _EPOCH), "\n".join(record) + "\n")
    return path


def find_wheel(wheelhouse: str | Path, name: str) -> Path | None:
    """A wheel of ``name`` in ``wheelhouse`` (any version), or None."""
    prefix = name.replace("-", "_").lower() + "-"
    for p in sorted(Path(wheelhouse).glob("*.whl")) if Path(wheelhouse).is_dir() else []:
        if p.name.lower().startswith(prefix):
            return p
    return None
